package syncapi_test

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// Unread counts kept between syncs (unreadcache.go) stay exact: each
// incremental sync counts the new notifications on top of the last, a
// receipt starts the count afresh, and threads keep their own counts.
func TestUnreadCountsAcrossIncrementalSyncs(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := createRoom(t, s, alice.UserID)
		joinRoom(t, s, bob, roomID)
		room := "rooms.join." + gjson.Escape(roomID)
		filter := "&filter=" + url.QueryEscape(`{"room":{"timeline":{"unread_thread_notifications":true}}}`)
		since := ""
		// syncTo syncs bob until the event is in, checking the counts then.
		syncTo := func(eventID string, wantMain, wantThread int64, thread string) {
			t.Helper()
			r := syncUntil(t, s, bob, since, filter, func(r gjson.Result) bool {
				return r.Get(room + ".timeline.events.#(event_id==" + eventID + ")").Exists()
			})
			since = r.Get("next_batch").String()
			if n := r.Get(room + ".unread_notifications.notification_count").Int(); n != wantMain {
				t.Fatalf("after %s: main count %d, want %d: %s", eventID, n, wantMain, r.Get(room).Raw)
			}
			if thread != "" {
				if n := r.Get(room + ".unread_thread_notifications." + gjson.Escape(thread) + ".notification_count").Int(); n != wantThread {
					t.Fatalf("after %s: thread count %d, want %d: %s", eventID, n, wantThread, r.Get(room).Raw)
				}
			}
		}
		var msgs []string
		for i := 1; i <= 6; i++ {
			msgs = append(msgs, send(t, s, alice, roomID, "m.room.message", text(fmt.Sprintf("m%d", i))))
			syncTo(msgs[len(msgs)-1], int64(i), 0, "")
		}
		// A receipt on the fourth message leaves two unread; the count
		// goes on from there.
		s.MustOK("POST", roomPath(roomID, "/receipt/m.read/"+url.PathEscape(msgs[3])), bob.AccessToken, map[string]any{})
		msgs = append(msgs, send(t, s, alice, roomID, "m.room.message", text("m7")))
		syncTo(msgs[6], 3, 0, "")
		// A thread counts apart, and a threaded receipt clears only it.
		root := msgs[6]
		r1 := send(t, s, alice, roomID, "m.room.message", related("t1", "m.thread", root))
		syncTo(r1, 3, 1, root)
		r2 := send(t, s, alice, roomID, "m.room.message", related("t2", "m.thread", root))
		syncTo(r2, 3, 2, root)
		s.MustOK("POST", roomPath(roomID, "/receipt/m.read/"+url.PathEscape(r1)), bob.AccessToken, map[string]any{"thread_id": root})
		r3 := send(t, s, alice, roomID, "m.room.message", related("t3", "m.thread", root))
		syncTo(r3, 3, 2, root)
		m8 := send(t, s, alice, roomID, "m.room.message", text("m8"))
		syncTo(m8, 4, 2, root)
		// An initial sync agrees with the counts kept along the way.
		since = ""
		syncTo(m8, 4, 2, root)
	})
}
