package searchapi_test

import (
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

var txn atomic.Int64

func createRoom(t *testing.T, s *testserver.Server, u *testserver.User, body map[string]any) string {
	t.Helper()
	return s.MustOK("POST", "/_matrix/client/v3/createRoom", u.AccessToken, body).Get("room_id").String()
}

func send(t *testing.T, s *testserver.Server, u *testserver.User, roomID string, content map[string]any) string {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", url.PathEscape(roomID), txn.Add(1))
	return s.MustOK("PUT", path, u.AccessToken, content).Get("event_id").String()
}

func say(t *testing.T, s *testserver.Server, u *testserver.User, roomID, body string) string {
	t.Helper()
	return send(t, s, u, roomID, map[string]any{"msgtype": "m.text", "body": body})
}

func join(t *testing.T, s *testserver.Server, u *testserver.User, roomID string) {
	t.Helper()
	s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), u.AccessToken, map[string]any{})
}

func leave(t *testing.T, s *testserver.Server, u *testserver.User, roomID string) {
	t.Helper()
	s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", u.AccessToken, map[string]any{})
}

// search runs a room_events search; extra fields join the criteria.
func search(t *testing.T, s *testserver.Server, u *testserver.User, term string, extra map[string]any, nextBatch string) gjson.Result {
	t.Helper()
	criteria := map[string]any{"search_term": term}
	for k, v := range extra {
		criteria[k] = v
	}
	path := "/_matrix/client/v3/search"
	if nextBatch != "" {
		path += "?next_batch=" + url.QueryEscape(nextBatch)
	}
	r := s.MustOK("POST", path, u.AccessToken, map[string]any{"search_categories": map[string]any{"room_events": criteria}})
	return r.Get("search_categories.room_events")
}

// searchUntil repeats a search until cond holds: the index follows the
// room stream asynchronously.
func searchUntil(t *testing.T, s *testserver.Server, u *testserver.User, term string, extra map[string]any, what string, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := search(t, s, u, term, extra, "")
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("search %q: %s never happened; last response %s", term, what, r.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// resultIDs lists the event IDs of a response's results, in order.
func resultIDs(r gjson.Result) []string {
	var ids []string
	for _, x := range r.Get("results.#.result.event_id").Array() {
		ids = append(ids, x.String())
	}
	return ids
}

func hasResult(id string) func(gjson.Result) bool {
	return func(r gjson.Result) bool {
		for _, x := range resultIDs(r) {
			if x == id {
				return true
			}
		}
		return false
	}
}

func resultCount(n int) func(gjson.Result) bool {
	return func(r gjson.Result) bool { return len(resultIDs(r)) == n }
}
