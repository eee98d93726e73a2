package syncapi_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func presencePath(userID string) string {
	return "/_matrix/client/v3/presence/" + url.PathEscape(userID) + "/status"
}

// presenceOf finds a user's m.presence event in a sync response.
func presenceOf(r gjson.Result, userID string) gjson.Result {
	return r.Get("presence.events.#(sender==" + userID + ")")
}

func TestPresence(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		eve := s.Register("eve", "pw")
		roomID := createRoom(t, s, alice.UserID)
		setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")

		s.MustOK("PUT", presencePath(alice.UserID), alice.AccessToken, map[string]any{"presence": "online", "status_msg": "tea"})
		me := s.MustOK("GET", presencePath(alice.UserID), alice.AccessToken, nil)
		if me.Get("presence").String() != "online" || me.Get("status_msg").String() != "tea" || !me.Get("last_active_ago").Exists() {
			t.Fatalf("own presence: %s", me)
		}

		// Bob shares a room with alice: he sees her presence, once the
		// sync API has his membership.
		rb := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool { return presenceOf(r, alice.UserID).Exists() })
		p := presenceOf(rb, alice.UserID)
		if p.Get("type").String() != "m.presence" || p.Get("content.presence").String() != "online" ||
			p.Get("content.status_msg").String() != "tea" || !p.Get("content.currently_active").Bool() {
			t.Fatalf("alice's presence in bob's sync: %s", p.Raw)
		}
		if !presenceOf(rb, bob.UserID).Exists() {
			t.Fatalf("bob's sync lacks his own presence: %s", rb.Get("presence").Raw)
		}
		got := s.MustOK("GET", presencePath(alice.UserID), bob.AccessToken, nil)
		if got.Get("presence").String() != "online" || got.Get("status_msg").String() != "tea" {
			t.Fatalf("GET alice's presence as bob: %s", got)
		}
		nextBob := rb.Get("next_batch").String()

		// Eve shares no room: nothing in her sync, and 403 on GET.
		re := syncNow(s, eve, "")
		if presenceOf(re, alice.UserID).Exists() || presenceOf(re, bob.UserID).Exists() {
			t.Fatalf("a stranger sees presence: %s", re.Get("presence").Raw)
		}
		s.ExpectError(403, "M_FORBIDDEN", "GET", presencePath(alice.UserID), eve.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", presencePath("@ghost:"+serverOf(alice)), alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", presencePath("ghost"), alice.AccessToken, nil)

		// set_presence=unavailable on alice's sync reaches bob's next sync.
		s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&set_presence=unavailable", alice.AccessToken, nil)
		rb = syncUntil(t, s, bob, nextBob, "", func(r gjson.Result) bool { return presenceOf(r, alice.UserID).Exists() })
		if p := presenceOf(rb, alice.UserID); p.Get("content.presence").String() != "unavailable" ||
			p.Get("content.status_msg").String() != "tea" || p.Get("content.currently_active").Bool() {
			t.Fatalf("alice's unavailable presence: %s", p.Raw)
		}
		nextBob = rb.Get("next_batch").String()
		// offline leaves it alone; the default marks her online again.
		s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&set_presence=offline", alice.AccessToken, nil)
		if r := syncNow(s, bob, nextBob); presenceOf(r, alice.UserID).Exists() {
			t.Fatalf("set_presence=offline changed presence: %s", r.Get("presence").Raw)
		}
		if got := s.MustOK("GET", presencePath(alice.UserID), bob.AccessToken, nil); got.Get("presence").String() != "unavailable" {
			t.Fatalf("after set_presence=offline: %s", got)
		}
		syncNow(s, alice, "")
		rb = syncUntil(t, s, bob, nextBob, "", func(r gjson.Result) bool { return presenceOf(r, alice.UserID).Exists() })
		if p := presenceOf(rb, alice.UserID); p.Get("content.presence").String() != "online" {
			t.Fatalf("alice back online: %s", p.Raw)
		}

		// Filters: not_types ["*"] switches presence off; senders narrow it.
		off := "&filter=" + url.QueryEscape(`{"presence":{"not_types":["*"]}}`)
		if r := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0"+off, bob.AccessToken, nil); r.Get("presence.events.#").Int() != 0 {
			t.Fatalf("presence switched off by filter still sent: %s", r.Get("presence").Raw)
		}
		onlyBob := "&filter=" + url.QueryEscape(`{"presence":{"senders":["`+bob.UserID+`"]}}`)
		r := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0"+onlyBob, bob.AccessToken, nil)
		if presenceOf(r.JSON(), alice.UserID).Exists() || !presenceOf(r.JSON(), bob.UserID).Exists() {
			t.Fatalf("senders filter: %s", r.Get("presence").Raw)
		}

		// An explicit offline with no status message.
		s.MustOK("PUT", presencePath(alice.UserID), alice.AccessToken, map[string]any{"presence": "offline"})
		got = s.MustOK("GET", presencePath(alice.UserID), bob.AccessToken, nil)
		if got.Get("presence").String() != "offline" || got.Get("status_msg").Exists() || got.Get("currently_active").Bool() {
			t.Fatalf("after PUT offline: %s", got)
		}
	})
}

func TestPresenceWakesRoomPeers(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := createRoom(t, s, alice.UserID)
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	rb := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(state_key==" + bob.UserID + ")").Exists()
	})
	next := rb.Get("next_batch").String()
	done := make(chan gjson.Result, 1)
	start := time.Now()
	go func() {
		done <- s.MustOK("GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(next), bob.AccessToken, nil).JSON()
	}()
	time.Sleep(200 * time.Millisecond)
	s.MustOK("PUT", presencePath(alice.UserID), alice.AccessToken, map[string]any{"presence": "unavailable", "status_msg": "brb"})
	select {
	case r := <-done:
		if presenceOf(r, alice.UserID).Get("content.status_msg").String() != "brb" || time.Since(start) > 15*time.Second {
			t.Fatalf("long poll not woken with the presence change: %s", r.Raw)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("long poll never returned")
	}
}

func TestPresenceErrors(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	path := presencePath(alice.UserID)
	s.ExpectError(403, "M_FORBIDDEN", "PUT", presencePath(bob.UserID), alice.AccessToken, map[string]any{"presence": "online"})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]any{"presence": "away"})
	s.ExpectError(400, "M_MISSING_PARAM", "PUT", path, alice.AccessToken, map[string]any{"status_msg": "x"})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{"presence": 1})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{"presence": "online", "status_msg": 5})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]any{"presence": "online", "status_msg": strings.Repeat("x", 1025)})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]any{"presence": "online", "status_msg": "a\u0000b"})
	s.ExpectError(400, "M_NOT_JSON", "PUT", path, alice.AccessToken, "nope")
	s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/sync?set_presence=busy", alice.AccessToken, nil)
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", path, "", nil)
	// A user who never synced or set anything reads as offline to themself.
	got := s.MustOK("GET", presencePath(bob.UserID), bob.AccessToken, nil)
	if got.Get("presence").String() != "offline" {
		t.Fatalf("fresh user's presence: %s", got)
	}
}
