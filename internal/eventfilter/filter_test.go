package eventfilter

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name string
		in   string
		want *Filter
	}{
		{"empty", `{}`, &Filter{}},
		{"spaces around", " \n{ } \t", &Filter{}},
		{"nulls are absent", `{"event_fields": null, "event_format": null, "presence": null, "room": {"timeline": null, "rooms": null}}`,
			&Filter{Room: &RoomFilter{}}},
		{"unknown fields ignored", `{"org.example": 1, "room": {"timeline": {"io.element.x": [1], "limit": 3}}}`,
			&Filter{Room: &RoomFilter{Timeline: &RoomEventFilter{EventFilter: EventFilter{Limit: 3}}}}},
		{"top level", `{"event_fields": ["type", "content.body"], "event_format": "federation",
			"presence": {"types": ["m.presence"], "not_senders": ["@a:x"], "limit": 5},
			"account_data": {"not_types": ["*"], "senders": []}}`,
			&Filter{
				EventFields: []string{"type", "content.body"},
				EventFormat: EventFormatFederation,
				Presence:    &EventFilter{Types: []string{"m.presence"}, NotSenders: []string{"@a:x"}, Limit: 5},
				AccountData: &EventFilter{NotTypes: []string{"*"}, Senders: []string{}},
			}},
		{"room", `{"room": {"rooms": ["!a:x", "!abc"], "not_rooms": [], "include_leave": true,
			"ephemeral": {"types": ["m.receipt"]},
			"state": {"lazy_load_members": true, "include_redundant_members": true},
			"timeline": {"limit": 10, "contains_url": false, "unread_thread_notifications": true, "not_rooms": ["!b:x"], "rooms": ["!c:x"]},
			"account_data": {"contains_url": true}}}`,
			&Filter{Room: &RoomFilter{
				Rooms: []string{"!a:x", "!abc"}, NotRooms: []string{}, IncludeLeave: true,
				Ephemeral:   &RoomEventFilter{EventFilter: EventFilter{Types: []string{"m.receipt"}}},
				State:       &RoomEventFilter{LazyLoadMembers: true, IncludeRedundantMembers: true},
				Timeline:    &RoomEventFilter{EventFilter: EventFilter{Limit: 10}, ContainsURL: &no, UnreadThreadNotifications: true, NotRooms: []string{"!b:x"}, Rooms: []string{"!c:x"}},
				AccountData: &RoomEventFilter{ContainsURL: &yes},
			}}},
		{"integral limit forms", `{"presence": {"limit": 1e2}, "account_data": {"limit": 7.0}}`,
			&Filter{Presence: &EventFilter{Limit: 100}, AccountData: &EventFilter{Limit: 7}}},
		{"false flags", `{"room": {"include_leave": false, "state": {"lazy_load_members": false}}}`,
			&Filter{Room: &RoomFilter{State: &RoomEventFilter{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		field string // "" expects ErrNotJSON
	}{
		{"empty body", ``, ""},
		{"not JSON", `{nope`, ""},
		{"array", `[]`, ""},
		{"string", `"x"`, ""},
		{"null", `null`, ""},
		{"bad UTF-8", "{\"event_fields\": [\"\xff\"]}", ""},
		{"trailing junk", `{} {}`, ""},
		{"event_fields not list", `{"event_fields": "type"}`, "event_fields"},
		{"event_fields numbers", `{"event_fields": [1]}`, "event_fields"},
		{"event_fields null entry", `{"event_fields": ["a", null]}`, "event_fields"},
		{"event_format unknown", `{"event_format": "raw"}`, "event_format"},
		{"event_format number", `{"event_format": 1}`, "event_format"},
		{"presence not object", `{"presence": []}`, "presence"},
		{"presence limit zero", `{"presence": {"limit": 0}}`, "presence.limit"},
		{"account_data limit negative", `{"account_data": {"limit": -1}}`, "account_data.limit"},
		{"limit fraction", `{"presence": {"limit": 1.5}}`, "presence.limit"},
		{"limit string", `{"presence": {"limit": "10"}}`, "presence.limit"},
		{"limit huge", `{"presence": {"limit": 1e40}}`, "presence.limit"},
		{"limit bool", `{"presence": {"limit": true}}`, "presence.limit"},
		{"types not strings", `{"presence": {"types": [true]}}`, "presence.types"},
		{"not_types object", `{"presence": {"not_types": {}}}`, "presence.not_types"},
		{"senders without sigil", `{"presence": {"senders": ["alice"]}}`, "presence.senders"},
		{"not_senders empty string", `{"account_data": {"not_senders": [""]}}`, "account_data.not_senders"},
		{"room not object", `{"room": "all"}`, "room"},
		{"room rooms not room IDs", `{"room": {"rooms": ["#alias:x"]}}`, "room.rooms"},
		{"room not_rooms number", `{"room": {"not_rooms": 3}}`, "room.not_rooms"},
		{"include_leave string", `{"room": {"include_leave": "yes"}}`, "room.include_leave"},
		{"timeline not object", `{"room": {"timeline": 10}}`, "room.timeline"},
		{"timeline limit", `{"room": {"timeline": {"limit": 0}}}`, "room.timeline.limit"},
		{"state rooms", `{"room": {"state": {"rooms": ["x"]}}}`, "room.state.rooms"},
		{"ephemeral not_rooms", `{"room": {"ephemeral": {"not_rooms": [null]}}}`, "room.ephemeral.not_rooms"},
		{"account_data contains_url", `{"room": {"account_data": {"contains_url": 1}}}`, "room.account_data.contains_url"},
		{"lazy_load_members", `{"room": {"state": {"lazy_load_members": "true"}}}`, "room.state.lazy_load_members"},
		{"include_redundant_members", `{"room": {"state": {"include_redundant_members": 0}}}`, "room.state.include_redundant_members"},
		{"unread_thread_notifications", `{"room": {"timeline": {"unread_thread_notifications": []}}}`, "room.timeline.unread_thread_notifications"},
		{"timeline senders", `{"room": {"timeline": {"not_senders": ["bob"]}}}`, "room.timeline.not_senders"},
		{"list too long", `{"event_fields": [` + strings.Repeat(`"a",`, MaxListLength) + `"a"]}`, "event_fields"},
		{"string too long", `{"presence": {"types": ["` + strings.Repeat("a", MaxStringLength+1) + `"]}}`, "presence.types"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if tt.field == "" {
				if !errors.Is(err, ErrNotJSON) {
					t.Fatalf("got %v, want ErrNotJSON", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a FieldError", err)
			}
			if fe.Field != tt.field || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("got field %q (%v), want %q", fe.Field, err, tt.field)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	big := `{"event_fields": ["` + strings.Repeat("a", MaxSize) + `"]}`
	if _, err := Parse([]byte(big)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
}

// Absent and empty lists mean different things, so they must survive a
// trip through JSON; so must a false contains_url.
func TestRoundTrip(t *testing.T) {
	in := `{"event_fields": [], "presence": {}, "room": {"rooms": [], "timeline": {"types": [], "contains_url": false}}}`
	f, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"event_fields":[],"presence":{},"room":{"rooms":[],"timeline":{"types":[],"contains_url":false}}}`
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
	again, err := Parse(out)
	if err != nil || !reflect.DeepEqual(again, f) {
		t.Fatalf("reparse: %+v, %v", again, err)
	}
}

func TestParseRoomEventFilter(t *testing.T) {
	f, err := ParseRoomEventFilter([]byte(`{"types":["m.room.message"],"limit":5,"lazy_load_members":true}`))
	if err != nil || f.Limit != 5 || len(f.Types) != 1 || !f.LazyLoadMembers {
		t.Fatalf("got %+v, %v", f, err)
	}
	var fe *FieldError
	if _, err := ParseRoomEventFilter([]byte(`{"limit":"x"}`)); !errors.As(err, &fe) || fe.Field != "limit" {
		t.Fatalf("bad limit: %v", err)
	}
	if _, err := ParseRoomEventFilter([]byte(`[]`)); !errors.Is(err, ErrNotJSON) {
		t.Fatalf("array: %v", err)
	}
}
