package syncapi_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// A held long-poll answers what is new when woken, the same empty answer
// as an immediate sync when its timeout passes, and an unauthenticated one
// is refused before anything is held.
func TestLongPollHeldAnswers(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := createRoom(t, s, alice.UserID)
		since := joinRoom(t, s, bob, roomID)

		// Nothing new: the long-poll waits its timeout, then answers as an
		// immediate sync does, with the same next_batch.
		now := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), bob.AccessToken, nil).JSON()
		start := time.Now()
		held := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=600&since="+url.QueryEscape(since), bob.AccessToken, nil).JSON()
		if waited := time.Since(start); waited < 500*time.Millisecond {
			t.Fatalf("long-poll answered after %v, before its timeout", waited)
		}
		if held.Get("next_batch").String() != now.Get("next_batch").String() {
			t.Fatalf("timed-out long-poll: next_batch %q, immediate sync %q", held.Get("next_batch"), now.Get("next_batch"))
		}
		for _, field := range []string{"rooms", "account_data.events", "to_device.events", "device_one_time_keys_count"} {
			if !held.Get(field).Exists() {
				t.Errorf("timed-out long-poll lacks %s: %s", field, held.Raw)
			}
		}

		// News wakes it with the news.
		after(s, "PUT", roomPath(roomID, "/send/m.room.message/lp1"), alice.AccessToken, text("wake up"))
		r := pollUntil(t, s, bob, since, 10*time.Second, func(r gjson.Result) bool {
			return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(content.body==\"wake up\")").Exists()
		})
		if r.Get("next_batch").String() == since {
			t.Fatalf("woken long-poll did not move next_batch")
		}

		// No token: refused, not held.
		start = time.Now()
		s.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(since), "", nil)
		if waited := time.Since(start); waited > 5*time.Second {
			t.Fatalf("unauthenticated long-poll was held %v", waited)
		}
	})
}
