package clientapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"reflect"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

func upgradePath(roomID string) string {
	return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/upgrade"
}

// transferred is the state an upgrade copies, with the content it is given here.
var transferred = map[string]any{
	"m.room.name":               map[string]string{"name": "Old but gold"},
	"m.room.topic":              map[string]string{"topic": "Upgrades"},
	"m.room.avatar":             map[string]string{"url": "mxc://localhost/avatar"},
	"m.room.join_rules":         map[string]string{"join_rule": "invite"},
	"m.room.history_visibility": map[string]string{"history_visibility": "joined"},
	"m.room.guest_access":       map[string]string{"guest_access": "can_join"},
	"m.room.encryption":         map[string]string{"algorithm": "m.megolm.v1.aes-sha2"},
	"m.room.server_acl":         map[string]any{"allow": []string{"*"}, "deny": []string{"evil.example"}, "allow_ip_literals": false},
	"m.room.canonical_alias":    map[string]string{"alias": "#up:localhost"},
}

func TestRoomUpgrade(t *testing.T) {
	for _, tc := range []struct{ from, to string }{{"10", "11"}, {"11", "12"}, {"12", "12"}, {"12", "10"}} {
		t.Run(tc.from+"->"+tc.to, func(t *testing.T) {
			testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
				testRoomUpgrade(t, s, tc.from, tc.to)
			})
		})
	}
}

func testRoomUpgrade(t *testing.T, s *testserver.Server, from, to string) {
	ctx := context.Background()
	alice, bob, carol, dave := s.Register("alice", "pw"), s.Register("bob", "pw"), s.Register("carol", "pw"), s.Register("dave", "pw")
	oldRoom := dirCreateRoom(t, s, alice, from)
	dirJoin(t, s, bob, oldRoom)
	dirJoin(t, s, carol, oldRoom)
	s.MustOK("PUT", aliasPath("#up:localhost"), alice.AccessToken, map[string]string{"room_id": oldRoom})
	s.MustOK("PUT", aliasPath("#up2:localhost"), bob.AccessToken, map[string]string{"room_id": oldRoom})
	for typ, content := range transferred {
		if err := dirSendState(s, alice, oldRoom, typ, "", content); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
	}
	users := map[string]int{alice.UserID: 100, bob.UserID: 50}
	if from == "12" {
		users = map[string]int{bob.UserID: 50}
	}
	if err := dirSendState(s, alice, oldRoom, "m.room.power_levels", "", map[string]any{
		"users": users, "state_default": 50, "events_default": 0, "invite": 0, "users_default": 0,
		"events": map[string]int{"m.room.power_levels": 100, "m.room.tombstone": 100, "m.room.canonical_alias": 50},
	}); err != nil {
		t.Fatal(err)
	}
	if err := dirSendState(s, alice, oldRoom, "m.room.member", carol.UserID, map[string]string{"membership": "ban", "reason": "spam"}); err != nil {
		t.Fatal(err)
	}
	s.MustOK("PUT", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(oldRoom), alice.AccessToken, map[string]string{"visibility": "public"})

	// Refusals first: nothing may have changed after them.
	s.ExpectError(403, "M_FORBIDDEN", "POST", upgradePath(oldRoom), bob.AccessToken, map[string]string{"new_version": to})
	s.ExpectError(403, "M_FORBIDDEN", "POST", upgradePath(oldRoom), dave.AccessToken, map[string]string{"new_version": to})
	s.ExpectError(400, "M_UNSUPPORTED_ROOM_VERSION", "POST", upgradePath(oldRoom), alice.AccessToken, map[string]string{"new_version": "999"})
	s.ExpectError(400, "M_UNSUPPORTED_ROOM_VERSION", "POST", upgradePath(oldRoom), alice.AccessToken, map[string]string{"new_version": ""})
	s.ExpectError(400, "M_MISSING_PARAM", "POST", upgradePath(oldRoom), alice.AccessToken, map[string]string{})
	s.ExpectError(400, "M_BAD_JSON", "POST", upgradePath(oldRoom), alice.AccessToken, map[string]int{"new_version": 11})
	s.ExpectError(404, "M_NOT_FOUND", "POST", upgradePath("!unknown:localhost"), alice.AccessToken, map[string]string{"new_version": to})
	s.ExpectError(400, "M_INVALID_PARAM", "POST", upgradePath("nope"), alice.AccessToken, map[string]string{"new_version": to})
	s.ExpectError(401, "M_MISSING_TOKEN", "POST", upgradePath(oldRoom), "", map[string]string{"new_version": to})
	if dirState(t, s, oldRoom, "m.room.tombstone", "").Exists() {
		t.Fatal("a refused upgrade left a tombstone")
	}

	r := s.MustOK("POST", upgradePath(oldRoom), alice.AccessToken, map[string]string{"new_version": to})
	newRoom := r.Get("replacement_room").String()
	if newRoom == "" || newRoom == oldRoom {
		t.Fatalf("upgrade: %s", r)
	}
	if v, err := s.Server.Roomserver.RoomVersion(ctx, newRoom); err != nil || string(v) != to {
		t.Fatalf("new room version %q, %v", v, err)
	}
	create := dirState(t, s, newRoom, "m.room.create", "")
	if create.Get("predecessor.room_id").String() != oldRoom || !create.Get("predecessor.event_id").Exists() || create.Get("type").Exists() {
		t.Fatalf("create: %s", create.Raw)
	}
	if to != "12" {
		// Where the new ID is ours to choose, the predecessor names the tombstone.
		ts, err := s.Server.Roomserver.CurrentStateEvent(ctx, oldRoom, "m.room.tombstone", "")
		if err != nil || ts == nil || create.Get("predecessor.event_id").String() != ts.EventID() {
			t.Fatalf("predecessor.event_id %s is not the tombstone (%v)", create.Get("predecessor.event_id"), err)
		}
	}

	// The state came along.
	for typ, content := range transferred {
		got := dirState(t, s, newRoom, typ, "")
		if !reflect.DeepEqual(got.Value(), jsonValue(t, content)) {
			t.Fatalf("%s: got %s, want %v", typ, got.Raw, content)
		}
	}
	pl := dirState(t, s, newRoom, "m.room.power_levels", "")
	if pl.Get("users."+gjson.Escape(bob.UserID)).Int() != 50 || pl.Get("state_default").Int() != 50 ||
		pl.Get("events."+gjson.Escape("m.room.tombstone")).Int() != 100 {
		t.Fatalf("power levels: %s", pl.Raw)
	}
	aliceLevel := pl.Get("users." + gjson.Escape(alice.UserID))
	if to == "12" && aliceLevel.Exists() || to != "12" && aliceLevel.Int() != 100 {
		t.Fatalf("alice's level in version %s: %s", to, pl.Raw)
	}
	if m := dirState(t, s, newRoom, "m.room.member", carol.UserID); m.Get("membership").String() != "ban" || m.Get("reason").String() != "spam" {
		t.Fatalf("carol's ban: %s", m.Raw)
	}
	if m := dirState(t, s, newRoom, "m.room.member", bob.UserID); m.Exists() {
		t.Fatalf("bob's membership was copied: %s", m.Raw)
	}

	// The old room is tombstoned and restricted.
	tomb := dirState(t, s, oldRoom, "m.room.tombstone", "")
	if tomb.Get("replacement_room").String() != newRoom || tomb.Get("body").String() == "" {
		t.Fatalf("tombstone: %s", tomb.Raw)
	}
	oldPL := dirState(t, s, oldRoom, "m.room.power_levels", "")
	if oldPL.Get("events_default").Int() != 50 || oldPL.Get("invite").Int() != 50 || oldPL.Get("users."+gjson.Escape(bob.UserID)).Int() != 50 {
		t.Fatalf("old room power levels: %s", oldPL.Raw)
	}
	if c := dirState(t, s, oldRoom, "m.room.canonical_alias", ""); c.Get("alias").Exists() {
		t.Fatalf("old room kept its canonical alias: %s", c.Raw)
	}

	// Aliases and the directory listing moved.
	for _, a := range []string{"#up:localhost", "#up2:localhost"} {
		if r := s.MustOK("GET", aliasPath(a), "", nil); r.Get("room_id").String() != newRoom {
			t.Fatalf("%s: %s", a, r)
		}
	}
	if r := s.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(newRoom)+"/aliases", alice.AccessToken, nil); r.Get("aliases.#").Int() != 2 {
		t.Fatalf("new room's aliases: %s", r)
	}
	if r := s.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(oldRoom)+"/aliases", alice.AccessToken, nil); r.Get("aliases").Raw != "[]" {
		t.Fatalf("old room's aliases: %s", r)
	}
	if r := s.MustOK("GET", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(newRoom), "", nil); r.Get("visibility").String() != "public" {
		t.Fatalf("new room's visibility: %s", r)
	}
	if r := s.MustOK("GET", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(oldRoom), "", nil); r.Get("visibility").String() != "private" {
		t.Fatalf("old room's visibility: %s", r)
	}
	// Banned in the old room, banned in the new.
	if err := dirSendState(s, carol, newRoom, "m.room.member", carol.UserID, map[string]string{"membership": "join"}); err == nil {
		t.Fatal("banned carol joined the new room")
	}
}

// TestUpgradeRaisesThenRestoresUpgrader: a moderator who may send the
// tombstone but not every copied state event still gets a full copy, and
// ends with their own level (made an integer).
func TestUpgradeRaisesThenRestoresUpgrader(t *testing.T) {
	s := testserver.New(t)
	alice, bob := s.Register("alice", "pw"), s.Register("bob", "pw")
	oldRoom := dirCreateRoom(t, s, alice, "9", rsapi.StateEvent{Type: "m.room.encryption", Content: map[string]string{"algorithm": "m.megolm.v1.aes-sha2"}})
	dirJoin(t, s, bob, oldRoom)
	if err := dirSendState(s, alice, oldRoom, "m.room.power_levels", "", map[string]any{
		"users":  map[string]any{alice.UserID: 100, bob.UserID: "60"}, // a string level, allowed before version 10
		"events": map[string]int{"m.room.tombstone": 60, "m.room.encryption": 100, "m.room.power_levels": 100},
	}); err != nil {
		t.Fatal(err)
	}
	r := s.MustOK("POST", upgradePath(oldRoom), bob.AccessToken, map[string]string{"new_version": "11"})
	newRoom := r.Get("replacement_room").String()
	if dirState(t, s, newRoom, "m.room.encryption", "").Get("algorithm").String() != "m.megolm.v1.aes-sha2" {
		t.Fatal("encryption was not copied")
	}
	pl := dirState(t, s, newRoom, "m.room.power_levels", "")
	if got := pl.Get("users." + gjson.Escape(bob.UserID)); got.Type != gjson.Number || got.Int() != 60 || pl.Get("users."+gjson.Escape(alice.UserID)).Int() != 100 {
		t.Fatalf("final power levels: %s", pl.Raw)
	}
	if dirState(t, s, oldRoom, "m.room.tombstone", "").Get("replacement_room").String() != newRoom {
		t.Fatal("no tombstone")
	}
	// Restricting the old room is best effort: bob may not send its power
	// levels, so they stay as they were.
	if dirState(t, s, oldRoom, "m.room.power_levels", "").Get("events_default").Int() != 0 {
		t.Fatalf("old room restricted by a user without the power to")
	}
}

func TestUpgradeToVersion12WithAdditionalCreators(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice, bob := s.Register("alice", "pw"), s.Register("bob", "pw")
		spaceID, err := s.Server.Roomserver.CreateRoom(context.Background(), rsapi.CreateRoomRequest{
			Version: "11", Creator: alice.UserID, CreateContent: map[string]any{"type": "m.space", "m.federate": false},
			InitialState: []rsapi.StateEvent{
				{Type: "m.room.member", StateKey: alice.UserID, Content: map[string]string{"membership": "join"}},
				{Type: "m.room.power_levels", Content: map[string]any{"users": map[string]int{alice.UserID: 100, bob.UserID: 100}}},
				{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "public"}},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		dirJoin(t, s, bob, spaceID)
		s.ExpectError(400, "M_INVALID_PARAM", "POST", upgradePath(spaceID), alice.AccessToken,
			map[string]any{"new_version": "12", "additional_creators": []string{"not a user"}})
		r := s.MustOK("POST", upgradePath(spaceID), alice.AccessToken,
			map[string]any{"new_version": "12", "additional_creators": []string{bob.UserID, bob.UserID, alice.UserID}})
		newRoom := r.Get("replacement_room").String()
		create := dirState(t, s, newRoom, "m.room.create", "")
		if create.Get("type").String() != "m.space" || create.Get("m\\.federate").Bool() || create.Get("m\\.federate").Type != gjson.False ||
			create.Get("additional_creators").Raw != `["`+bob.UserID+`"]` || create.Get("predecessor.room_id").String() != spaceID {
			t.Fatalf("create: %s", create.Raw)
		}
		// Creators are not listed in version 12's power levels.
		if pl := dirState(t, s, newRoom, "m.room.power_levels", ""); pl.Get("users").Raw != "{}" {
			t.Fatalf("power levels: %s", pl.Raw)
		}
		// Additional creators are ignored by versions without them.
		r = s.MustOK("POST", upgradePath(newRoom), alice.AccessToken,
			map[string]any{"new_version": "11", "additional_creators": []string{"ignored"}})
		if c := dirState(t, s, r.Get("replacement_room").String(), "m.room.create", ""); c.Get("additional_creators").Exists() {
			t.Fatalf("create: %s", c.Raw)
		}
	})
}

// jsonValue is v as gjson reads it back from JSON, to compare with
// DeepEqual.
func jsonValue(t *testing.T, v any) any {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return gjson.ParseBytes(raw).Value()
}
