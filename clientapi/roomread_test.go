package clientapi_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func setHistoryVisibility(t *testing.T, s *testserver.Server, u *testserver.User, roomID, visibility string) {
	t.Helper()
	s.MustOK("PUT", roomPath(roomID, "state", "m.room.history_visibility"), u.AccessToken, map[string]string{"history_visibility": visibility})
}

func TestGetEventFollowsHistoryVisibility(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		roomID := rsCreateRoom(t, s, alice, "11", "shared")
		shared := sendText(t, s, alice, roomID, "1", "shared with later joiners")
		setHistoryVisibility(t, s, alice, roomID, "joined")
		before := sendText(t, s, alice, roomID, "2", "before bob joined")
		rsMembership(t, s, roomID, bob, "join", nil)
		during := sendText(t, s, alice, roomID, "3", "while bob is here")
		rsMembership(t, s, roomID, bob, "leave", nil)
		after := sendText(t, s, alice, roomID, "4", "after bob left")

		get := func(u *testserver.User, eventID string, visible bool) {
			t.Helper()
			path := roomPath(roomID, "event", eventID)
			if visible {
				s.MustOK("GET", path, u.AccessToken, nil)
			} else {
				s.ExpectError(404, "M_NOT_FOUND", "GET", path, u.AccessToken, nil)
			}
		}
		get(bob, shared, true) // shared, and bob joined later
		get(bob, before, false)
		get(bob, during, true)
		get(bob, after, false) // he had left
		for _, id := range []string{shared, before, during, after} {
			get(alice, id, true)
			get(carol, id, false) // never joined
		}

		// Forgetting the room forgets its history too.
		if _, err := s.Server.Roomserver.ForgetRoom(context.Background(), roomID, bob.UserID); err != nil {
			t.Fatal(err)
		}
		get(bob, during, false)

		// world_readable: anyone sees what is sent while it holds, but not
		// what came before.
		setHistoryVisibility(t, s, alice, roomID, "world_readable")
		public := sendText(t, s, alice, roomID, "5", "for everyone")
		get(carol, public, true)
		get(carol, after, false)

		s.ExpectError(404, "M_NOT_FOUND", "GET", roomPath(roomID, "event", "$unknown"), alice.AccessToken, nil)
		// An event is only found under its own room.
		other := rsCreateRoom(t, s, alice, "11", "shared")
		s.ExpectError(404, "M_NOT_FOUND", "GET", roomPath(other, "event", public), alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", roomPath("!nowhere:localhost", "event", public), alice.AccessToken, nil)
	})
}

func TestRoomStateNeedsMembership(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		roomID := rsCreateRoom(t, s, alice, "11", "shared")
		s.MustOK("PUT", roomPath(roomID, "state", "m.room.name"), alice.AccessToken, map[string]string{"name": "first"})

		// Carol never joined: she reads nothing.
		for _, path := range []string{
			roomPath(roomID, "state"), roomPath(roomID, "state", "m.room.name"), roomPath(roomID, "state", "m.room.name") + "/",
			roomPath(roomID, "members"), roomPath(roomID, "joined_members"),
		} {
			s.ExpectError(403, "M_FORBIDDEN", "GET", path, carol.AccessToken, nil)
		}
		// Nor does an invitee who never joined.
		rsMembershipBy(t, s, roomID, alice, carol.UserID, "invite")
		s.ExpectError(403, "M_FORBIDDEN", "GET", roomPath(roomID, "state"), carol.AccessToken, nil)

		rsMembership(t, s, roomID, bob, "join", nil)
		r := s.MustOK("GET", roomPath(roomID, "state"), bob.AccessToken, nil)
		types := map[string]bool{}
		for _, ev := range r.JSON().Array() {
			types[ev.Get("type").String()] = true
			if ev.Get("room_id").String() != roomID || !ev.Get("event_id").Exists() || !ev.Get("state_key").Exists() {
				t.Fatalf("state event: %s", ev.Raw)
			}
		}
		for _, want := range []string{"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility", "m.room.name"} {
			if !types[want] {
				t.Fatalf("state lacks %s: %s", want, r)
			}
		}

		// Bob leaves; what changes afterwards is not his to see.
		rsMembership(t, s, roomID, bob, "leave", nil)
		s.MustOK("PUT", roomPath(roomID, "state", "m.room.name"), alice.AccessToken, map[string]string{"name": "second"})
		rsMembership(t, s, roomID, carol, "join", nil)
		if r := s.MustOK("GET", roomPath(roomID, "state", "m.room.name"), bob.AccessToken, nil); r.Get("name").String() != "first" {
			t.Fatalf("bob reads the name set after he left: %s", r)
		}
		if r := s.MustOK("GET", roomPath(roomID, "state", "m.room.name"), alice.AccessToken, nil); r.Get("name").String() != "second" {
			t.Fatalf("alice reads an old name: %s", r)
		}
		r = s.MustOK("GET", roomPath(roomID, "members"), bob.AccessToken, nil)
		if got := memberMap(r); got[bob.UserID] != "leave" || got[alice.UserID] != "join" || got[carol.UserID] != "invite" {
			t.Fatalf("bob's members as he left: %v", got)
		}
		s.ExpectError(403, "M_FORBIDDEN", "GET", roomPath(roomID, "joined_members"), bob.AccessToken, nil)
		// Once he forgets the room, he has no past in it to read.
		if ok, err := s.Server.Roomserver.ForgetRoom(context.Background(), roomID, bob.UserID); err != nil || !ok {
			t.Fatalf("forget: %v, %v", ok, err)
		}
		s.ExpectError(403, "M_FORBIDDEN", "GET", roomPath(roomID, "state", "m.room.name"), bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "GET", roomPath(roomID, "members"), bob.AccessToken, nil)

		// In a world_readable room anyone reads the current state.
		dave := s.Register("dave", "pw")
		s.ExpectError(403, "M_FORBIDDEN", "GET", roomPath(roomID, "state"), dave.AccessToken, nil)
		setHistoryVisibility(t, s, alice, roomID, "world_readable")
		if r := s.MustOK("GET", roomPath(roomID, "state", "m.room.name"), dave.AccessToken, nil); r.Get("name").String() != "second" {
			t.Fatalf("world_readable name: %s", r)
		}
		s.MustOK("GET", roomPath(roomID, "state"), dave.AccessToken, nil)
		s.MustOK("GET", roomPath(roomID, "members"), dave.AccessToken, nil)
		r = s.MustOK("GET", roomPath(roomID, "joined_members"), dave.AccessToken, nil)
		if n := len(r.Get("joined").Map()); n != 2 {
			t.Fatalf("joined members: %s", r)
		}

		s.ExpectError(404, "M_NOT_FOUND", "GET", roomPath(roomID, "state", "m.room.topic"), alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", roomPath(roomID, "state", "m.room.member", "@nobody:localhost"), alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", roomPath(roomID, "state", "m.room.name")+"?format=xml", alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", roomPath("!nowhere:localhost", "state"), alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", roomPath("nowhere", "state"), alice.AccessToken, nil)
	})
}

func memberMap(r *testserver.Response) map[string]string {
	out := map[string]string{}
	for _, ev := range r.Get("chunk").Array() {
		out[ev.Get("state_key").String()] = ev.Get("content.membership").String()
	}
	return out
}

func TestMembersFilters(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	carol := s.Register("carol", "pw")
	roomID := rsCreateRoom(t, s, alice, "10", "shared")
	rsMembership(t, s, roomID, bob, "join", nil)
	rsMembership(t, s, roomID, bob, "leave", nil)
	rsMembershipBy(t, s, roomID, alice, carol.UserID, "invite")

	for query, want := range map[string]string{
		"":                                      "alice=join bob=leave carol=invite",
		"?membership=join":                      "alice=join",
		"?not_membership=leave":                 "alice=join carol=invite",
		"?membership=leave":                     "bob=leave",
		"?membership=leave&not_membership=join": "bob=leave carol=invite", // the spec's "or"
		"?at=ignored_until_sync_exists":         "alice=join bob=leave carol=invite",
	} {
		r := s.MustOK("GET", roomPath(roomID, "members")+query, alice.AccessToken, nil)
		got := memberMap(r)
		var parts []string
		for _, u := range []*testserver.User{alice, bob, carol} {
			if m, ok := got[u.UserID]; ok {
				parts = append(parts, u.Localpart+"="+m)
			}
		}
		if strings.Join(parts, " ") != want || len(got) != len(parts) {
			t.Errorf("members%s = %v, want %s", query, got, want)
		}
	}
	s.ExpectError(400, "M_INVALID_PARAM", "GET", roomPath(roomID, "members")+"?membership=joined", alice.AccessToken, nil)
	s.ExpectError(400, "M_INVALID_PARAM", "GET", roomPath(roomID, "members")+"?not_membership=x", alice.AccessToken, nil)
}

func TestJoinedMembers(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := rsCreateRoom(t, s, alice, "12", "shared")
	rsMembership(t, s, roomID, bob, "join", map[string]any{"displayname": "Bob", "avatar_url": "mxc://localhost/bob"})
	r := s.MustOK("GET", roomPath(roomID, "joined_members"), alice.AccessToken, nil)
	want := fmt.Sprintf(`{"joined":{%q:{},%q:{"display_name":"Bob","avatar_url":"mxc://localhost/bob"}}}`, alice.UserID, bob.UserID)
	if r.JSON().Get("joined."+gjsonKey(bob.UserID)).Raw != `{"display_name":"Bob","avatar_url":"mxc://localhost/bob"}` ||
		r.JSON().Get("joined."+gjsonKey(alice.UserID)).Raw != `{"display_name":null,"avatar_url":null}` || len(r.Get("joined").Map()) != 2 {
		t.Fatalf("joined members = %s, want %s", r, want)
	}
	guest := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{}).Get("access_token").String()
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "GET", roomPath(roomID, "joined_members"), guest, nil)
}

func gjsonKey(k string) string { return strings.ReplaceAll(k, ".", `\.`) }

func TestTimestampToEvent(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := rsCreateRoom(t, s, alice, "11", "joined")
		first := sendText(t, s, alice, roomID, "1", "first")
		time.Sleep(5 * time.Millisecond)
		mid := time.Now().UnixMilli()
		time.Sleep(5 * time.Millisecond)
		second := sendText(t, s, alice, roomID, "2", "second")
		secondTS := s.MustOK("GET", roomPath(roomID, "event", second), alice.AccessToken, nil).Get("origin_server_ts").Int()

		path := func(room string, query string) string {
			return "/_matrix/client/v1/rooms/" + url.PathEscape(room) + "/timestamp_to_event" + query
		}
		r := s.MustOK("GET", path(roomID, fmt.Sprintf("?ts=%d&dir=f", mid)), alice.AccessToken, nil)
		if r.Get("event_id").String() != second || r.Get("origin_server_ts").Int() != secondTS {
			t.Fatalf("forward: %s, want %s", r, second)
		}
		if r := s.MustOK("GET", path(roomID, fmt.Sprintf("?ts=%d&dir=b", mid)), alice.AccessToken, nil); r.Get("event_id").String() != first {
			t.Fatalf("backward: %s, want %s", r, first)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", path(roomID, fmt.Sprintf("?ts=%d&dir=f", secondTS+1)), alice.AccessToken, nil)
		// Bob may see none of the room's history.
		s.ExpectError(404, "M_NOT_FOUND", "GET", path(roomID, fmt.Sprintf("?ts=%d&dir=b", mid)), bob.AccessToken, nil)
		// He joins: only events from his join on are his.
		rsMembership(t, s, roomID, bob, "join", nil)
		third := sendText(t, s, alice, roomID, "3", "third")
		r = s.MustOK("GET", path(roomID, fmt.Sprintf("?ts=%d&dir=f", mid)), bob.AccessToken, nil)
		if id := r.Get("event_id").String(); id == second || id == first {
			t.Fatalf("bob found an event from before his join: %s", r)
		}
		_ = third

		s.ExpectError(400, "M_MISSING_PARAM", "GET", path(roomID, "?dir=f"), alice.AccessToken, nil)
		s.ExpectError(400, "M_MISSING_PARAM", "GET", path(roomID, "?ts=1"), alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", path(roomID, "?ts=1&dir=x"), alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", path(roomID, "?ts=soon&dir=f"), alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", path("!nowhere:localhost", "?ts=1&dir=f"), alice.AccessToken, nil)
	})
}
