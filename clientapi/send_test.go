package clientapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// rsCreateRoom makes a public room through the roomserver's Go API (the
// createRoom endpoint is built elsewhere): the creator joined, power
// levels where the creator has 100 and the rest 0 (state needs 50, redact
// 50), and the given history visibility.
func rsCreateRoom(t *testing.T, s *testserver.Server, creator *testserver.User, version, visibility string) string {
	t.Helper()
	users := map[string]int{creator.UserID: 100}
	if version == "12" {
		users = map[string]int{} // creators have unlimited power and are not listed
	}
	roomID, err := s.Server.Roomserver.CreateRoom(context.Background(), rsapi.CreateRoomRequest{
		Version: gomatrixserverlib.RoomVersion(version), Creator: creator.UserID,
		InitialState: []rsapi.StateEvent{
			{Type: "m.room.member", StateKey: creator.UserID, Content: map[string]any{"membership": "join"}},
			{Type: "m.room.power_levels", Content: map[string]any{"users": users, "users_default": 0, "events_default": 0,
				"state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0}},
			{Type: "m.room.join_rules", Content: map[string]any{"join_rule": "public"}},
			{Type: "m.room.history_visibility", Content: map[string]any{"history_visibility": visibility}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return roomID
}

// rsMembership sets a user's own membership through the roomserver's Go
// API (the membership endpoints are built elsewhere); content is merged in.
func rsMembership(t *testing.T, s *testserver.Server, roomID string, u *testserver.User, membership string, content map[string]any) {
	t.Helper()
	c := map[string]any{"membership": membership}
	for k, v := range content {
		c[k] = v
	}
	rsMember(t, s, roomID, u, u.UserID, c)
}

// rsMembershipBy has sender set target's membership (invite, kick, ban).
func rsMembershipBy(t *testing.T, s *testserver.Server, roomID string, sender *testserver.User, target, membership string) {
	t.Helper()
	rsMember(t, s, roomID, sender, target, map[string]any{"membership": membership})
}

func rsMember(t *testing.T, s *testserver.Server, roomID string, sender *testserver.User, target string, content map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(content)
	if _, err := s.Server.Roomserver.SendEvent(context.Background(), rsapi.NewEvent{
		RoomID: roomID, Sender: sender.UserID, Type: "m.room.member", StateKey: &target, Content: raw,
	}); err != nil {
		t.Fatalf("%s sets %s to %v: %v", sender.UserID, target, content["membership"], err)
	}
}

func roomPath(roomID string, rest ...string) string {
	p := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// sendText sends an m.room.message over HTTP and returns its event ID.
func sendText(t *testing.T, s *testserver.Server, u *testserver.User, roomID, txnID, body string) string {
	t.Helper()
	r := s.MustOK("PUT", roomPath(roomID, "send", "m.room.message", txnID), u.AccessToken,
		map[string]string{"msgtype": "m.text", "body": body})
	id := r.Get("event_id").String()
	if !strings.HasPrefix(id, "$") {
		t.Fatalf("send: no event ID: %s", r)
	}
	return id
}

func TestSendMessage(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := rsCreateRoom(t, s, alice, "11", "shared")

		id := sendText(t, s, alice, roomID, "t1", "hello")
		r := s.MustOK("GET", roomPath(roomID, "event", id), alice.AccessToken, nil)
		if r.Get("content.body").String() != "hello" || r.Get("sender").String() != alice.UserID ||
			r.Get("room_id").String() != roomID || r.Get("type").String() != "m.room.message" {
			t.Fatalf("event: %s", r)
		}

		// A retransmission gets the first event back; a new transaction,
		// or the same one from another device, is a new event.
		if again := sendText(t, s, alice, roomID, "t1", "hello"); again != id {
			t.Fatalf("retransmission made %s, want %s", again, id)
		}
		if other := sendText(t, s, alice, roomID, "t2", "hello"); other == id {
			t.Fatal("a new transaction ID gave the old event")
		}
		phone := s.Login("alice", "pw")
		if other := sendText(t, s, phone, roomID, "t1", "hello"); other == id {
			t.Fatal("another device's transaction gave the first device's event")
		}

		// Any event type without a state key goes, custom ones too.
		s.MustOK("PUT", roomPath(roomID, "send", "com.example.game.score", "t3"), alice.AccessToken, map[string]int{"score": 3})

		// Bob is not in the room: the auth rules refuse him.
		s.ExpectError(403, "M_FORBIDDEN", "PUT", roomPath(roomID, "send", "m.room.message", "b1"), bob.AccessToken, map[string]string{"body": "hi"})
		rsMembership(t, s, roomID, bob, "join", nil)
		sendText(t, s, bob, roomID, "b1", "now I can")

		s.ExpectError(404, "M_NOT_FOUND", "PUT", roomPath("!nowhere:localhost", "send", "m.room.message", "x"), alice.AccessToken, map[string]string{"body": "hi"})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", roomPath("#alias:localhost", "send", "m.room.message", "x"), alice.AccessToken, map[string]string{"body": "hi"})
		s.ExpectError(401, "M_MISSING_TOKEN", "PUT", roomPath(roomID, "send", "m.room.message", "x"), "", map[string]string{"body": "hi"})
	})
}

func TestSendBadInput(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := rsCreateRoom(t, s, alice, "10", "shared")
	send := roomPath(roomID, "send", "m.room.message", "x")

	for _, body := range []string{"", "[1]", `"text"`, "nope", "{", "null"} {
		s.ExpectError(400, "M_NOT_JSON", "PUT", send, alice.AccessToken, body)
	}
	// Over the spec's 65536 bytes for the whole event.
	s.ExpectError(413, "M_TOO_LARGE", "PUT", send, alice.AccessToken, map[string]string{"body": strings.Repeat("a", 70000)})
	s.ExpectError(413, "M_TOO_LARGE", "PUT", roomPath(roomID, "send", strings.Repeat("t", 256), "x"), alice.AccessToken, map[string]string{})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", roomPath(roomID, "send", "m.room.message", strings.Repeat("x", 256)), alice.AccessToken, map[string]string{})
	// Room version 6 and later allow only integers in the safe range.
	s.ExpectError(400, "M_BAD_JSON", "PUT", send, alice.AccessToken, `{"body": "x", "n": 1.5}`)
	s.ExpectError(400, "M_BAD_JSON", "PUT", send, alice.AccessToken, `{"body": "x", "n": 9007199254740992}`)
	// A redaction sent here needs its target.
	s.ExpectError(400, "M_BAD_JSON", "PUT", roomPath(roomID, "send", "m.room.redaction", "r"), alice.AccessToken, map[string]string{"reason": "no target"})
	s.ExpectError(400, "M_BAD_JSON", "PUT", roomPath(roomID, "send", "m.room.redaction", "r"), alice.AccessToken, map[string]any{"redacts": 5})
	s.ExpectError(400, "M_BAD_JSON", "PUT", roomPath(roomID, "send", "m.room.redaction", "r"), alice.AccessToken, `{"redacts": "$a\u0000"}`)
}

func TestRedactionThroughSend(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	for _, version := range []string{"10", "11"} {
		roomID := rsCreateRoom(t, s, alice, version, "shared")
		target := sendText(t, s, alice, roomID, "m"+version, "secret")
		r := s.MustOK("PUT", roomPath(roomID, "send", "m.room.redaction", "r"+version), alice.AccessToken,
			map[string]string{"redacts": target, "reason": "oops"})
		redaction := s.MustOK("GET", roomPath(roomID, "event", r.Get("event_id").String()), alice.AccessToken, nil)
		if version == "10" {
			// Moved to the top level, as room versions before 11 have it.
			if redaction.Get("redacts").String() != target || redaction.Get("content.redacts").Exists() {
				t.Fatalf("v10 redaction: %s", redaction)
			}
		} else if redaction.Get("content.redacts").String() != target {
			t.Fatalf("v11 redaction: %s", redaction)
		}
		if redaction.Get("content.reason").String() != "oops" {
			t.Fatalf("reason lost: %s", redaction)
		}
		got := s.MustOK("GET", roomPath(roomID, "event", target), alice.AccessToken, nil)
		if got.Get("content.body").Exists() || !got.Get("unsigned.redacted_because").Exists() {
			t.Fatalf("v%s: target not redacted: %s", version, got)
		}
	}
}

func TestPutState(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := rsCreateRoom(t, s, alice, "11", "shared")

		// The state key may be left out, with or without the slash.
		s.MustOK("PUT", roomPath(roomID, "state", "m.room.name"), alice.AccessToken, map[string]string{"name": "one"})
		r := s.MustOK("GET", roomPath(roomID, "state", "m.room.name"), alice.AccessToken, nil)
		if r.Get("name").String() != "one" {
			t.Fatalf("name: %s", r)
		}
		s.MustOK("PUT", roomPath(roomID, "state", "m.room.name")+"/", alice.AccessToken, map[string]string{"name": "two"})
		if r := s.MustOK("GET", roomPath(roomID, "state", "m.room.name")+"/", alice.AccessToken, nil); r.Get("name").String() != "two" {
			t.Fatalf("name: %s", r)
		}
		// A state key that holds a slash stays one path segment.
		key := "a/b"
		id := s.MustOK("PUT", roomPath(roomID, "state", "com.example.thing", key), alice.AccessToken, map[string]int{"n": 1}).Get("event_id").String()
		r = s.MustOK("GET", roomPath(roomID, "state", "com.example.thing", key)+"?format=event", alice.AccessToken, nil)
		if r.Get("event_id").String() != id || r.Get("state_key").String() != key || r.Get("content.n").Int() != 1 {
			t.Fatalf("format=event: %s", r)
		}

		// Bob is not in the room; once in, he lacks the power for names.
		s.ExpectError(403, "M_FORBIDDEN", "PUT", roomPath(roomID, "state", "m.room.name"), bob.AccessToken, map[string]string{"name": "bob's"})
		rsMembership(t, s, roomID, bob, "join", nil)
		s.ExpectError(403, "M_FORBIDDEN", "PUT", roomPath(roomID, "state", "m.room.name"), bob.AccessToken, map[string]string{"name": "bob's"})
		// Membership changes are state too: bob sets his own display name.
		s.MustOK("PUT", roomPath(roomID, "state", "m.room.member", bob.UserID), bob.AccessToken,
			map[string]string{"membership": "join", "displayname": "Bobby"})
		r = s.MustOK("GET", roomPath(roomID, "joined_members"), alice.AccessToken, nil)
		if r.Get("joined."+gjsonKey(bob.UserID)+".display_name").String() != "Bobby" {
			t.Fatalf("joined members: %s", r)
		}

		s.ExpectError(400, "M_NOT_JSON", "PUT", roomPath(roomID, "state", "m.room.topic"), alice.AccessToken, "[]")
		s.ExpectError(413, "M_TOO_LARGE", "PUT", roomPath(roomID, "state", "m.room.topic"), alice.AccessToken, map[string]string{"topic": strings.Repeat("t", 70000)})
		s.ExpectError(413, "M_TOO_LARGE", "PUT", roomPath(roomID, "state", "com.example.thing", strings.Repeat("k", 256)), alice.AccessToken, map[string]string{})
		s.ExpectError(404, "M_NOT_FOUND", "PUT", roomPath("!nowhere:localhost", "state", "m.room.name"), alice.AccessToken, map[string]string{"name": "x"})
		// POST is not how state is set.
		s.ExpectError(405, "M_UNRECOGNIZED", "POST", roomPath(roomID, "state", "m.room.name"), alice.AccessToken, map[string]string{"name": "x"})
	})
}

func TestCanonicalAliasIsChecked(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := rsCreateRoom(t, s, alice, "11", "shared")
	other := rsCreateRoom(t, s, alice, "11", "shared")
	ctx := context.Background()
	rs := s.Server.Roomserver
	for alias, room := range map[string]string{"#here:localhost": roomID, "#here2:localhost": roomID, "#there:localhost": other} {
		if err := rs.SetAlias(ctx, alias, room, alice.UserID); err != nil {
			t.Fatal(err)
		}
	}
	path := roomPath(roomID, "state", "m.room.canonical_alias")

	s.MustOK("PUT", path, alice.AccessToken, map[string]any{"alias": "#here:localhost", "alt_aliases": []string{"#here2:localhost"}})
	s.ExpectError(400, "M_BAD_ALIAS", "PUT", path, alice.AccessToken, map[string]any{"alias": "#there:localhost"})
	s.ExpectError(400, "M_BAD_ALIAS", "PUT", path, alice.AccessToken, map[string]any{"alt_aliases": []string{"#unknown:localhost"}})
	s.ExpectError(400, "M_BAD_ALIAS", "PUT", path, alice.AccessToken, map[string]any{"alias": "#remote:elsewhere.example"})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]any{"alias": "not-an-alias"})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]any{"alt_aliases": []string{"#nohost"}})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{"alias": 3})

	// Aliases already in the event are not checked again: #here2 is
	// deleted, and the room can still keep it while changing the rest.
	if err := rs.RemoveAlias(ctx, "#here2:localhost"); err != nil {
		t.Fatal(err)
	}
	s.MustOK("PUT", path, alice.AccessToken, map[string]any{"alt_aliases": []string{"#here2:localhost", "#here:localhost"}})
	// Removing aliases needs no check either.
	s.MustOK("PUT", path, alice.AccessToken, map[string]any{})
	// Someone who may not send the event hears that first.
	s.ExpectError(403, "M_FORBIDDEN", "PUT", path, bob.AccessToken, map[string]any{"alias": "#there:localhost"})
}

func TestRedact(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := rsCreateRoom(t, s, alice, "10", "shared")
		rsMembership(t, s, roomID, bob, "join", nil)
		mine := sendText(t, s, alice, roomID, "a1", "alice's")
		his := sendText(t, s, bob, roomID, "b1", "bob's")

		// Bob lacks the power to redact alice's event, but not his own.
		s.ExpectError(403, "M_FORBIDDEN", "PUT", roomPath(roomID, "redact", mine, "r1"), bob.AccessToken, map[string]string{"reason": "no"})
		first := s.MustOK("PUT", roomPath(roomID, "redact", his, "r2"), bob.AccessToken, map[string]string{"reason": "typo"}).Get("event_id").String()
		// The same transaction again is the same redaction.
		if again := s.MustOK("PUT", roomPath(roomID, "redact", his, "r2"), bob.AccessToken, map[string]string{"reason": "typo"}).Get("event_id").String(); again != first {
			t.Fatalf("retransmitted redaction: %s, want %s", again, first)
		}
		r := s.MustOK("GET", roomPath(roomID, "event", his), alice.AccessToken, nil)
		if r.Get("content.body").Exists() || r.Get("unsigned.redacted_because.content.reason").String() != "typo" {
			t.Fatalf("redacted event: %s", r)
		}
		r = s.MustOK("GET", roomPath(roomID, "event", first), alice.AccessToken, nil)
		if r.Get("type").String() != "m.room.redaction" || r.Get("redacts").String() != his {
			t.Fatalf("redaction: %s", r)
		}
		// Alice has the power.
		s.MustOK("PUT", roomPath(roomID, "redact", his, "a2"), alice.AccessToken, map[string]string{})
		s.MustOK("PUT", roomPath(roomID, "redact", mine, "a3"), alice.AccessToken, map[string]string{})
		if r := s.MustOK("GET", roomPath(roomID, "event", mine), bob.AccessToken, nil); r.Get("content.body").Exists() {
			t.Fatalf("alice's event not redacted: %s", r)
		}

		s.ExpectError(400, "M_NOT_JSON", "PUT", roomPath(roomID, "redact", mine, "a4"), alice.AccessToken, "reason")
		s.ExpectError(400, "M_BAD_JSON", "PUT", roomPath(roomID, "redact", mine, "a5"), alice.AccessToken, map[string]int{"reason": 1})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", roomPath(roomID, "redact", "not-an-event", "a6"), alice.AccessToken, map[string]string{})
		// Events of another room cannot be redacted from this one.
		other := rsCreateRoom(t, s, alice, "10", "shared")
		elsewhere := sendText(t, s, alice, other, "o1", "elsewhere")
		s.ExpectError(400, "M_BAD_JSON", "PUT", roomPath(roomID, "redact", elsewhere, "a7"), alice.AccessToken, map[string]string{})
		carol := s.Register("carol", "pw")
		s.ExpectError(403, "M_FORBIDDEN", "PUT", roomPath(roomID, "redact", mine, "c1"), carol.AccessToken, map[string]string{})
		s.ExpectError(404, "M_NOT_FOUND", "PUT", roomPath("!nowhere:localhost", "redact", mine, "a8"), alice.AccessToken, map[string]string{})
	})
}

func TestPathParamsMustBeText(t *testing.T) {
	// PostgreSQL stores neither NUL nor invalid UTF-8: both are refused
	// before they reach the database, on every database alike.
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		roomID := rsCreateRoom(t, s, alice, "11", "shared")
		msg := sendText(t, s, alice, roomID, "m", "hi")
		for _, c := range []struct{ method, path string }{
			{"PUT", roomPath(roomID, "send") + "/a%00b/t"},
			{"PUT", roomPath(roomID, "send") + "/a%FFb/t"},
			{"PUT", roomPath(roomID, "send", "m.room.message") + "/t%00"},
			{"PUT", roomPath(roomID, "state", "x") + "/k%00"},
			{"PUT", roomPath(roomID, "state") + "/x%FF"},
			{"GET", roomPath(roomID, "state", "x") + "/k%00"},
			{"GET", roomPath(roomID, "state") + "/x%00/k"},
			{"GET", "/_matrix/client/v3/rooms/!a%00b/state"},
			{"GET", "/_matrix/client/v3/rooms/!a%FFb/members"},
			{"PUT", roomPath(roomID, "redact") + "/$a%00/t"},
			{"PUT", roomPath(roomID, "redact", msg) + "/t%FF"},
		} {
			s.ExpectError(400, "M_INVALID_PARAM", c.method, c.path, alice.AccessToken, map[string]string{})
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", roomPath(roomID, "event")+"/$a%00", alice.AccessToken, nil)
	})
}
