package syncapi_test

import (
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// TestConcurrentSendersAndSyncers has several users send into two rooms at
// once while others long-poll: every syncing client must see every
// message exactly once, each room's messages in stream order.
func TestConcurrentSendersAndSyncers(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		const senders, perSender, syncers = 4, 15, 3
		owner := s.Register("owner", "pw")
		rooms := []string{createRoom(t, s, owner.UserID), createRoom(t, s, owner.UserID)}
		var sendUsers, syncUsers []*testserver.User
		for i := 0; i < senders; i++ {
			sendUsers = append(sendUsers, s.Register(fmt.Sprintf("sender%d", i), "pw"))
		}
		for i := 0; i < syncers; i++ {
			syncUsers = append(syncUsers, s.Register(fmt.Sprintf("reader%d", i), "pw"))
		}
		for _, room := range rooms {
			for _, u := range append(append([]*testserver.User{}, sendUsers...), syncUsers...) {
				s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/join", u.AccessToken, map[string]any{})
			}
		}
		total := senders * perSender
		type seen struct {
			ids   map[string]int
			order map[string][]int64 // room -> stream positions in arrival order
		}
		results := make([]seen, syncers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, u := range syncUsers {
			results[i] = seen{ids: map[string]int{}, order: map[string][]int64{}}
			// Begin from a token taken before any message is sent.
			first := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0", u.AccessToken, nil).Get("next_batch").String()
			wg.Add(1)
			go func(i int, u *testserver.User, since string) {
				defer wg.Done()
				<-start
				deadline := time.Now().Add(60 * time.Second)
				count := 0
				for count < total && time.Now().Before(deadline) {
					// A timeline limit above the total: a limited (gappy) sync
					// would be a loss here.
					r := s.Request("GET", "/_matrix/client/v3/sync?timeout=5000&filter="+url.QueryEscape(`{"room":{"timeline":{"limit":100}}}`)+"&since="+url.QueryEscape(since), u.AccessToken, nil)
					if r.Status != 200 {
						t.Errorf("sync: %s", r)
						return
					}
					body := r.JSON()
					for _, room := range rooms {
						if body.Get("rooms.join." + gjson.Escape(room) + ".timeline.limited").Bool() {
							t.Errorf("reader %d: a limited timeline though the limit exceeds all messages", i)
						}
						body.Get("rooms.join." + gjson.Escape(room) + ".timeline.events").ForEach(func(_, ev gjson.Result) bool {
							if ev.Get("type").String() != "m.room.message" {
								return true
							}
							results[i].ids[ev.Get("event_id").String()]++
							results[i].order[room] = append(results[i].order[room], ev.Get("content.seq").Int())
							count++
							return true
						})
					}
					since = body.Get("next_batch").String()
				}
			}(i, u, first)
		}
		close(start)
		var sendWG sync.WaitGroup
		for i, u := range sendUsers {
			sendWG.Add(1)
			go func(i int, u *testserver.User) {
				defer sendWG.Done()
				for n := 0; n < perSender; n++ {
					room := rooms[n%2]
					seq := int64(i*1000 + n)
					s.MustOK("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", url.PathEscape(room), n), u.AccessToken,
						map[string]any{"msgtype": "m.text", "body": "x", "seq": seq})
				}
			}(i, u)
		}
		sendWG.Wait()
		wg.Wait()
		for i, r := range results {
			if len(r.ids) != total {
				t.Errorf("reader %d saw %d distinct messages, want %d", i, len(r.ids), total)
			}
			for id, n := range r.ids {
				if n != 1 {
					t.Errorf("reader %d saw %s %d times", i, id, n)
				}
			}
			// Each sender's messages in a room arrive in the order sent.
			for room, seqs := range r.order {
				last := map[int64]int64{}
				for _, seq := range seqs {
					sender := seq / 1000
					if prev, ok := last[sender]; ok && seq <= prev {
						t.Errorf("reader %d, room %s: sender %d's message %d after %d", i, room, sender, seq, prev)
					}
					last[sender] = seq
				}
			}
		}
	})
}

// TestSyncTokensSurviveARestart takes a token, restarts the server, and
// checks the token still works and yields exactly what came after it.
func TestSyncTokensSurviveARestart(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := createRoom(t, s, alice.UserID)
	rooms := "rooms.join." + gjson.Escape(roomID)
	before := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "before"})
	r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + before + ")").Exists()
	})
	token := r.Get("next_batch").String()
	s.Restart()
	after := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "after"})
	r = syncUntil(t, s, alice, token, "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + after + ")").Exists()
	})
	if r.Get(rooms + ".timeline.events.#(event_id==" + before + ")").Exists() {
		t.Fatal("an event from before the token came again after the restart")
	}
}
