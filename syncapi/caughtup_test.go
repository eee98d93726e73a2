package syncapi_test

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// A /sync right after createRoom answers shows the whole new room, not
// the first of its events (the client API waits for the sync API to
// store them: syncapi/caughtup.go).
func TestSyncRightAfterCreateRoomShowsAllOfIt(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		since := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0", alice.AccessToken, nil).Get("next_batch").String()
		for round := range 5 {
			var initial []map[string]any
			for i := range 12 {
				initial = append(initial, map[string]any{"type": "org.example.state", "state_key": fmt.Sprint(i),
					"content": map[string]any{"n": i}})
			}
			roomID := s.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{
				"preset": "private_chat", "name": "whole", "topic": "all of it", "initial_state": initial,
			}).Get("room_id").String()
			r := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), alice.AccessToken, nil).JSON()
			since = r.Get("next_batch").String()
			room := r.Get("rooms.join." + gjson.Escape(roomID))
			has := func(evType string) bool {
				q := "#(type==" + evType + ")"
				return room.Get("timeline.events."+q).Exists() || room.Get("state.events."+q).Exists()
			}
			for _, evType := range []string{"m.room.create", "org.example.state", "m.room.name", "m.room.topic"} {
				if !has(evType) {
					t.Fatalf("round %d: the sync right after createRoom lacks %s: %s", round, evType, room.Raw)
				}
			}
		}
	})
}
