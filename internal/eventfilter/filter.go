// Package eventfilter holds the filters clients define for the APIs that
// return events (POST /user/{userId}/filter, and inline in /sync and
// /messages), and Parse, which checks one against the spec's schema.
//
// A list that is absent (nil) does not restrict anything; a list that is
// present but empty matches nothing. Types keep that difference.
package eventfilter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Limits on what a client may store as a filter.
const (
	// MaxSize bounds a filter's JSON, in bytes.
	MaxSize = 64 << 10
	// MaxListLength bounds each list in a filter.
	MaxListLength = 1000
	// MaxStringLength bounds each string in a list, in bytes: room IDs,
	// user IDs and event types are at most 255 bytes, with room to spare
	// for wildcard patterns and field paths.
	MaxStringLength = 512
)

// Event formats.
const (
	EventFormatClient     = "client"
	EventFormatFederation = "federation"
)

// Filter is a whole filter (the spec's "Filter" / sync filter).
type Filter struct {
	// EventFields are dot-separated paths of the event fields to return;
	// nil returns all fields.
	EventFields []string `json:"event_fields,omitzero"`
	// EventFormat is "", EventFormatClient or EventFormatFederation; ""
	// means client.
	EventFormat string `json:"event_format,omitzero"`
	// Presence filters presence updates.
	Presence *EventFilter `json:"presence,omitzero"`
	// AccountData filters global account data.
	AccountData *EventFilter `json:"account_data,omitzero"`
	// Room filters everything about rooms.
	Room *RoomFilter `json:"room,omitzero"`
}

// EventFilter is the spec's EventFilter.
type EventFilter struct {
	// Limit is the most events to return; 0 means the server's default.
	Limit int `json:"limit,omitzero"`
	// Types and NotTypes are event types, where '*' matches any sequence
	// of characters. NotTypes wins over Types.
	Types    []string `json:"types,omitzero"`
	NotTypes []string `json:"not_types,omitzero"`
	// Senders and NotSenders are user IDs. NotSenders wins over Senders.
	Senders    []string `json:"senders,omitzero"`
	NotSenders []string `json:"not_senders,omitzero"`
}

// RoomEventFilter is the spec's RoomEventFilter: an EventFilter that also
// selects rooms and tunes what /sync sends.
type RoomEventFilter struct {
	EventFilter
	// Rooms and NotRooms are room IDs. NotRooms wins over Rooms.
	Rooms    []string `json:"rooms,omitzero"`
	NotRooms []string `json:"not_rooms,omitzero"`
	// ContainsURL, when set, keeps only events whose content has (true) or
	// lacks (false) a "url" key.
	ContainsURL               *bool `json:"contains_url,omitzero"`
	LazyLoadMembers           bool  `json:"lazy_load_members,omitzero"`
	IncludeRedundantMembers   bool  `json:"include_redundant_members,omitzero"`
	UnreadThreadNotifications bool  `json:"unread_thread_notifications,omitzero"`
}

// RoomFilter is the "room" part of a Filter. Rooms and NotRooms apply
// before the per-section filters.
type RoomFilter struct {
	Rooms    []string `json:"rooms,omitzero"`
	NotRooms []string `json:"not_rooms,omitzero"`
	// IncludeLeave includes rooms the user has left.
	IncludeLeave bool             `json:"include_leave,omitzero"`
	Ephemeral    *RoomEventFilter `json:"ephemeral,omitzero"`
	State        *RoomEventFilter `json:"state,omitzero"`
	Timeline     *RoomEventFilter `json:"timeline,omitzero"`
	AccountData  *RoomEventFilter `json:"account_data,omitzero"`
}

// ErrNotJSON is returned (wrapped) for input that is not a JSON object.
var ErrNotJSON = errors.New("filter is not a JSON object")

// ErrTooLarge is returned for input longer than MaxSize.
var ErrTooLarge = fmt.Errorf("filter is larger than %d bytes", MaxSize)

// FieldError is a filter that is JSON but breaks the schema: Field is the
// dot-separated path of the bad field, e.g. "room.timeline.limit".
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return "filter field " + e.Field + ": " + e.Reason }

// Parse checks a filter and decodes it. Its errors are ErrTooLarge,
// ErrNotJSON or a *FieldError. Unknown fields are ignored, and null counts
// as absent.
func Parse(data []byte) (*Filter, error) {
	if len(data) > MaxSize {
		return nil, ErrTooLarge
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' || !utf8.Valid(trimmed) || !json.Valid(trimmed) {
		return nil, ErrNotJSON
	}
	o, err := decodeObject(trimmed, "")
	if err != nil {
		return nil, err
	}
	f := &Filter{}
	if f.EventFields, err = o.strings("event_fields", 0); err != nil {
		return nil, err
	}
	if raw, ok := o.get("event_format"); ok {
		var s string
		if json.Unmarshal(raw, &s) != nil || (s != EventFormatClient && s != EventFormatFederation) {
			return nil, o.fail("event_format", `must be "client" or "federation"`)
		}
		f.EventFormat = s
	}
	if f.Presence, err = o.eventFilter("presence"); err != nil {
		return nil, err
	}
	if f.AccountData, err = o.eventFilter("account_data"); err != nil {
		return nil, err
	}
	if f.Room, err = o.roomFilter("room"); err != nil {
		return nil, err
	}
	return f, nil
}

// ParseRoomEventFilter checks and decodes a RoomEventFilter on its own, as
// /messages and /context take one. Errors as for Parse; an empty object
// is a filter that keeps everything.
func ParseRoomEventFilter(data []byte) (*RoomEventFilter, error) {
	if len(data) > MaxSize {
		return nil, ErrTooLarge
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' || !utf8.Valid(trimmed) || !json.Valid(trimmed) {
		return nil, ErrNotJSON
	}
	// Wrapped under the empty key, so field paths read as the client wrote them.
	holder := &object{fields: map[string]json.RawMessage{"": trimmed}}
	f, err := holder.roomEventFilter("")
	if err != nil {
		return nil, err
	}
	return f, nil
}

// object is a JSON object being checked, with the path that leads to it.
type object struct {
	path   string
	fields map[string]json.RawMessage
}

func decodeObject(raw json.RawMessage, path string) (*object, error) {
	o := &object{path: path}
	if err := json.Unmarshal(raw, &o.fields); err != nil || o.fields == nil {
		return nil, &FieldError{Field: path, Reason: "must be an object"}
	}
	return o, nil
}

func (o *object) field(key string) string {
	if o.path == "" {
		return key
	}
	return o.path + "." + key
}

func (o *object) fail(key, reason string) error {
	return &FieldError{Field: o.field(key), Reason: reason}
}

// get returns a field's value; absent and null are both not ok.
func (o *object) get(key string) (json.RawMessage, bool) {
	raw, ok := o.fields[key]
	if !ok || string(raw) == "null" {
		return nil, false
	}
	return raw, true
}

func (o *object) child(key string) (*object, error) {
	raw, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	return decodeObject(raw, o.field(key))
}

// strings reads a list of strings; sigil, when not 0, must start each one.
func (o *object) strings(key string, sigil byte) ([]string, error) {
	raw, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, o.fail(key, "must be an array of strings")
	}
	if len(items) > MaxListLength {
		return nil, o.fail(key, fmt.Sprintf("has more than %d entries", MaxListLength))
	}
	list := make([]string, len(items))
	for i, item := range items {
		// Unmarshal would read null as "", so insist on a string.
		if item[0] != '"' || json.Unmarshal(item, &list[i]) != nil {
			return nil, o.fail(key, "must be an array of strings")
		}
		s := list[i]
		if len(s) > MaxStringLength {
			return nil, o.fail(key, fmt.Sprintf("has an entry longer than %d bytes", MaxStringLength))
		}
		if sigil != 0 && (s == "" || s[0] != sigil) {
			return nil, o.fail(key, fmt.Sprintf("has an entry %q that does not start with %q", s, sigil))
		}
	}
	return list, nil
}

func (o *object) boolean(key string) (*bool, error) {
	raw, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, o.fail(key, "must be a boolean")
	}
	return &b, nil
}

// flag is boolean for fields where absent means false.
func (o *object) flag(key string) (bool, error) {
	b, err := o.boolean(key)
	return b != nil && *b, err
}

// limit reads a positive integer. Integral numbers written with a
// fraction or exponent (10.0, 1e2) are accepted: JSON does not tell them
// apart from integers.
func (o *object) limit(key string) (int, error) {
	raw, ok := o.get(key)
	if !ok {
		return 0, nil
	}
	bad := o.fail(key, "must be a positive integer")
	var n json.Number
	// Unmarshal would take a quoted number too; the schema says integer.
	if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') || json.Unmarshal(raw, &n) != nil {
		return 0, bad
	}
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		if i <= 0 || i > math.MaxInt32 {
			return 0, bad
		}
		return int(i), nil
	}
	fl, err := strconv.ParseFloat(string(n), 64)
	if err != nil || fl != math.Trunc(fl) || fl <= 0 || fl > math.MaxInt32 {
		return 0, bad
	}
	return int(fl), nil
}

func (o *object) eventFilter(key string) (*EventFilter, error) {
	c, err := o.child(key)
	if c == nil || err != nil {
		return nil, err
	}
	f := &EventFilter{}
	return f, c.fillEventFilter(f)
}

func (o *object) fillEventFilter(f *EventFilter) error {
	var err error
	if f.Limit, err = o.limit("limit"); err != nil {
		return err
	}
	if f.Types, err = o.strings("types", 0); err != nil {
		return err
	}
	if f.NotTypes, err = o.strings("not_types", 0); err != nil {
		return err
	}
	if f.Senders, err = o.strings("senders", '@'); err != nil {
		return err
	}
	f.NotSenders, err = o.strings("not_senders", '@')
	return err
}

func (o *object) roomEventFilter(key string) (*RoomEventFilter, error) {
	c, err := o.child(key)
	if c == nil || err != nil {
		return nil, err
	}
	f := &RoomEventFilter{}
	if err := c.fillEventFilter(&f.EventFilter); err != nil {
		return nil, err
	}
	if f.Rooms, err = c.strings("rooms", '!'); err != nil {
		return nil, err
	}
	if f.NotRooms, err = c.strings("not_rooms", '!'); err != nil {
		return nil, err
	}
	if f.ContainsURL, err = c.boolean("contains_url"); err != nil {
		return nil, err
	}
	if f.LazyLoadMembers, err = c.flag("lazy_load_members"); err != nil {
		return nil, err
	}
	if f.IncludeRedundantMembers, err = c.flag("include_redundant_members"); err != nil {
		return nil, err
	}
	if f.UnreadThreadNotifications, err = c.flag("unread_thread_notifications"); err != nil {
		return nil, err
	}
	return f, nil
}

func (o *object) roomFilter(key string) (*RoomFilter, error) {
	c, err := o.child(key)
	if c == nil || err != nil {
		return nil, err
	}
	f := &RoomFilter{}
	if f.Rooms, err = c.strings("rooms", '!'); err != nil {
		return nil, err
	}
	if f.NotRooms, err = c.strings("not_rooms", '!'); err != nil {
		return nil, err
	}
	if f.IncludeLeave, err = c.flag("include_leave"); err != nil {
		return nil, err
	}
	sections := []struct {
		key string
		dst **RoomEventFilter
	}{{"ephemeral", &f.Ephemeral}, {"state", &f.State}, {"timeline", &f.Timeline}, {"account_data", &f.AccountData}}
	for _, s := range sections {
		if *s.dst, err = c.roomEventFilter(s.key); err != nil {
			return nil, err
		}
	}
	return f, nil
}
