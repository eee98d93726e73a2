package syncapi_test

import (
	"net/url"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// History fetched from another server leaves out ignored users too.
func TestIgnoredUsersLeftOutOfBackfilledHistory(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "pw")
	bob := b.Register("bob", "pw")
	roomID, msgs := backfillRoom(t, a, alice.UserID, "shared", 5)
	join := joinThroughStoredState(t, a, b, roomID, bob.UserID, msgs[len(msgs)-1])
	syncUntil(t, b, bob, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + join.EventID() + ")").Exists()
	})
	b.MustOK("PUT", "/_matrix/client/v3/user/"+url.PathEscape(bob.UserID)+"/account_data/m.ignored_user_list", bob.AccessToken,
		map[string]any{"ignored_users": map[string]any{alice.UserID: map[string]any{}}})
	r := b.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=100", bob.AccessToken, nil)
	if !r.Get("chunk.#(event_id==" + join.EventID() + ")").Exists() {
		t.Fatalf("bob's own join is missing: %s", r)
	}
	for _, ev := range r.Get(`chunk.#(sender=="` + alice.UserID + `")#`).Array() {
		if !ev.Get("state_key").Exists() {
			t.Fatalf("a message of the ignored user in backfilled history: %s", ev.Raw)
		}
	}
	// Her state events stay: the room must look the same to everyone.
	if !r.Get(`chunk.#(type=="m.room.create")`).Exists() {
		t.Fatalf("the ignored user's state events are gone: %s", r)
	}
}
