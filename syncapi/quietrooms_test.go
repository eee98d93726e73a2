package syncapi_test

import (
	"net/url"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// Incremental syncs skip rooms with nothing new (roompositions.go); the
// rooms that do have news must still come, also after a restart, when
// the positions are read from the database again.
func TestIncrementalSyncSkipsQuietRoomsButNotNews(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		var rooms []string
		for range 3 {
			rooms = append(rooms, createRoom(t, s, alice.UserID))
		}
		last := sendEvent(t, s, rooms[2], alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "0"})
		r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
			return r.Get("rooms.join." + gjson.Escape(rooms[2]) + ".timeline.events.#(event_id==" + last + ")").Exists()
		})
		since := r.Get("next_batch").String()
		for i, restart := range []bool{false, true, false} {
			if restart {
				s.Restart()
				alice = s.Login("alice", "pw")
			}
			room := rooms[i]
			id := sendEvent(t, s, room, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "news"})
			r = syncUntil(t, s, alice, since, "", func(r gjson.Result) bool { return r.Get("rooms.join").Exists() && len(r.Get("rooms.join").Map()) > 0 })
			joined := r.Get("rooms.join").Map()
			if len(joined) != 1 || !r.Get("rooms.join."+gjson.Escape(room)+".timeline.events.#(event_id=="+id+")").Exists() {
				t.Fatalf("step %d: want only room %s with %s, got %s", i, room, id, r.Get("rooms.join").Raw)
			}
			since = r.Get("next_batch").String()
		}
		// Nothing new: no rooms at all.
		empty := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), alice.AccessToken, nil).JSON()
		if n := len(empty.Get("rooms.join").Map()); n != 0 {
			t.Errorf("a sync with nothing new has %d joined rooms: %s", n, empty.Get("rooms.join").Raw)
		}
	})
}
