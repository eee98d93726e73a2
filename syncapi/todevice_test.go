package syncapi_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func sendToDevicePath(evType, txnID string) string {
	return "/_matrix/client/v3/sendToDevice/" + url.PathEscape(evType) + "/" + url.PathEscape(txnID)
}

// syncNow is one sync that does not wait.
func syncNow(s *testserver.Server, u *testserver.User, since string) gjson.Result {
	path := "/_matrix/client/v3/sync?timeout=0"
	if since != "" {
		path += "&since=" + url.QueryEscape(since)
	}
	return s.MustOK("GET", path, u.AccessToken, nil).JSON()
}

func TestSendToDevice(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		bob2 := s.Login("bob", "pw")
		next1 := syncNow(s, bob, "").Get("next_batch").String()
		next2nd := syncNow(s, bob2, "").Get("next_batch").String()

		// To one device; unknown devices and users, and remote users, are ignored.
		s.MustOK("PUT", sendToDevicePath("m.test", "t1"), alice.AccessToken, map[string]any{"messages": map[string]any{
			bob.UserID:                map[string]any{bob.DeviceID: map[string]int{"n": 1}, "NOSUCHDEVICE": map[string]int{"n": 0}},
			"@ghost:" + serverOf(bob): map[string]any{"*": map[string]int{"n": 0}},
			"@carol:remote.example":   map[string]any{"*": map[string]int{"n": 0}},
		}})
		r := syncNow(s, bob, next1)
		evs := r.Get("to_device.events")
		if evs.Get("#").Int() != 1 || evs.Get("0.sender").String() != alice.UserID ||
			evs.Get("0.type").String() != "m.test" || evs.Get("0.content.n").Int() != 1 {
			t.Fatalf("bob's to-device events: %s", r.Get("to_device").Raw)
		}
		next2 := r.Get("next_batch").String()

		// Not acknowledged yet: syncing again with the old token sends it again.
		if again := syncNow(s, bob, next1); again.Get("to_device.events.#").Int() != 1 {
			t.Fatalf("unacknowledged message not sent again: %s", again.Get("to_device").Raw)
		}
		// Acknowledged by syncing with next2: gone, even for the old token.
		if r := syncNow(s, bob, next2); r.Get("to_device.events.#").Int() != 0 {
			t.Fatalf("acknowledged message sent again: %s", r.Get("to_device").Raw)
		}
		if r := syncNow(s, bob, next1); r.Get("to_device.events.#").Int() != 0 {
			t.Fatalf("acknowledged message not deleted: %s", r.Get("to_device").Raw)
		}
		// The other device got nothing.
		if r := syncNow(s, bob2, next2nd); r.Get("to_device.events.#").Int() != 0 {
			t.Fatalf("message reached the wrong device: %s", r.Get("to_device").Raw)
		}

		// A retried transaction is not sent twice.
		s.MustOK("PUT", sendToDevicePath("m.test", "t1"), alice.AccessToken, map[string]any{"messages": map[string]any{
			bob.UserID: map[string]any{bob.DeviceID: map[string]int{"n": 1}},
		}})
		if r := syncNow(s, bob, next2); r.Get("to_device.events.#").Int() != 0 {
			t.Fatalf("retried transaction delivered again: %s", r.Get("to_device").Raw)
		}

		// "*" reaches every device, a device of its own overriding it.
		s.MustOK("PUT", sendToDevicePath("m.test", "t2"), alice.AccessToken, map[string]any{"messages": map[string]any{
			bob.UserID: map[string]any{"*": map[string]int{"n": 2}, bob2.DeviceID: map[string]int{"n": 3}},
		}})
		if r := syncNow(s, bob, next2); r.Get("to_device.events.#").Int() != 1 || r.Get("to_device.events.0.content.n").Int() != 2 {
			t.Fatalf("first device, \"*\": %s", r.Get("to_device").Raw)
		}
		if r := syncNow(s, bob2, next2nd); r.Get("to_device.events.#").Int() != 1 || r.Get("to_device.events.0.content.n").Int() != 3 {
			t.Fatalf("second device, own message: %s", r.Get("to_device").Raw)
		}
	})
}

func serverOf(u *testserver.User) string { return u.UserID[strings.IndexByte(u.UserID, ':')+1:] }

func TestSendToDeviceWakesAndPages(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	next := syncNow(s, bob, "").Get("next_batch").String()

	done := make(chan gjson.Result, 1)
	start := time.Now()
	go func() {
		done <- s.MustOK("GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(next), bob.AccessToken, nil).JSON()
	}()
	time.Sleep(200 * time.Millisecond)
	s.MustOK("PUT", sendToDevicePath("m.test", "wake"), alice.AccessToken, map[string]any{"messages": map[string]any{
		bob.UserID: map[string]any{"*": map[string]string{"hello": "bob"}},
	}})
	select {
	case r := <-done:
		if r.Get("to_device.events.0.content.hello").String() != "bob" || time.Since(start) > 15*time.Second {
			t.Fatalf("long poll not woken with the message: %s", r.Raw)
		}
		next = r.Get("next_batch").String()
	case <-time.After(25 * time.Second):
		t.Fatal("long poll never returned")
	}

	// A long queue comes in pages of 100, in order.
	const total = 130
	for i := 0; i < total; i++ {
		s.MustOK("PUT", sendToDevicePath("m.test", fmt.Sprint("p", i)), alice.AccessToken, map[string]any{"messages": map[string]any{
			bob.UserID: map[string]any{bob.DeviceID: map[string]int{"i": i}},
		}})
	}
	r := syncNow(s, bob, next)
	if n := r.Get("to_device.events.#").Int(); n != 100 || r.Get("to_device.events.99.content.i").Int() != 99 {
		t.Fatalf("first page has %d events: %s", n, r.Get("to_device.events.@reverse.0").Raw)
	}
	r = syncNow(s, bob, r.Get("next_batch").String())
	if n := r.Get("to_device.events.#").Int(); n != total-100 || r.Get("to_device.events.0.content.i").Int() != 100 {
		t.Fatalf("second page has %d events: %s", n, r.Get("to_device.events.0").Raw)
	}
}

func TestSendToDeviceErrors(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	path := sendToDevicePath("m.test", "e1")
	s.ExpectError(400, "M_NOT_JSON", "PUT", path, alice.AccessToken, "not json")
	s.ExpectError(400, "M_NOT_JSON", "PUT", path, alice.AccessToken, "[]")
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{"messages": "x"})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{"messages": map[string]any{bob.UserID: "x"}})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{"messages": map[string]any{
		bob.UserID: map[string]any{bob.DeviceID: "not an object"},
	}})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]any{"messages": map[string]any{
		bob.UserID: map[string]any{bob.DeviceID: nil},
	}})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]any{"messages": map[string]any{
		"bob": map[string]any{"*": map[string]any{}},
	}})
	many := map[string]any{}
	for i := 0; i <= 1000; i++ {
		many[fmt.Sprint("D", i)] = map[string]any{}
	}
	s.ExpectError(413, "M_TOO_LARGE", "PUT", path, alice.AccessToken, map[string]any{"messages": map[string]any{bob.UserID: many}})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", sendToDevicePath("m.test", strings.Repeat("x", 300)), alice.AccessToken,
		map[string]any{"messages": map[string]any{}})
	s.ExpectError(401, "M_MISSING_TOKEN", "PUT", path, "", map[string]any{"messages": map[string]any{}})
	s.ExpectError(405, "M_UNRECOGNIZED", "GET", path, alice.AccessToken, nil)
	// None of the failures used up the transaction ID.
	next := syncNow(s, bob, "").Get("next_batch").String()
	s.MustOK("PUT", path, alice.AccessToken, map[string]any{"messages": map[string]any{bob.UserID: map[string]any{"*": map[string]int{"ok": 1}}}})
	if r := syncNow(s, bob, next); r.Get("to_device.events.0.content.ok").Int() != 1 {
		t.Fatalf("message after failed attempts not delivered: %s", r.Get("to_device").Raw)
	}
}

// TestToDeviceAndPresenceWaitingAcrossARestart: a sync skips the
// to-device and presence tables when their newest positions (kept in
// memory) are not past its token. After a restart those positions must
// come from the database again, or messages and changes that arrived
// before it would never be delivered.
func TestToDeviceAndPresenceWaitingAcrossARestart(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := createRoom(t, s, alice.UserID)
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	since := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(roomID)).Exists()
	}).Get("next_batch").String()
	// Nothing new for bob in either stream at his token.
	if r := syncNow(s, bob, since); r.Get("to_device.events.#").Int() != 0 {
		t.Fatalf("to-device before any was sent: %s", r.Get("to_device").Raw)
	}

	s.MustOK("PUT", sendToDevicePath("m.test", "t1"), alice.AccessToken, map[string]any{"messages": map[string]any{
		bob.UserID: map[string]any{bob.DeviceID: map[string]int{"n": 1}},
	}})
	s.MustOK("PUT", presencePath(alice.UserID), alice.AccessToken, map[string]any{"presence": "unavailable", "status_msg": "away"})
	s.Restart()

	r := syncNow(s, bob, since)
	if r.Get("to_device.events.#").Int() != 1 || r.Get("to_device.events.0.content.n").Int() != 1 {
		t.Fatalf("the message sent before the restart: %s", r.Get("to_device").Raw)
	}
	if p := presenceOf(r, alice.UserID); p.Get("content.status_msg").String() != "away" {
		t.Fatalf("alice's presence change from before the restart: %s", r.Get("presence").Raw)
	}
}
