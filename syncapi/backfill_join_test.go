package syncapi_test

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// After a join over federation through the client API, paging back with
// pages smaller than the history reaches every message sent before the
// join (backfill), the first page already holding the newest of them.
func TestMessagesBackfillAfterHTTPJoinSmallPages(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice, bob := a.Register("alice", "pw"), b.Register("bob", "pw")
	roomID := a.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").String()
	var sent []string
	for i := range 20 {
		sent = append(sent, a.MustOK("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/t"+fmt.Sprint(i),
			alice.AccessToken, map[string]any{"msgtype": "m.text", "body": fmt.Sprint("filler ", i)}).Get("event_id").String())
	}
	b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{})
	first := b.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=10", bob.AccessToken, nil)
	if first.Get("chunk.1.event_id").String() != sent[19] || !first.Get("end").Exists() {
		t.Fatalf("first page: %s", first.JSON().Raw)
	}
	ids, _ := pageBack(t, b, bob, roomID, 10)
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	for i, id := range sent {
		if !seen[id] {
			t.Fatalf("message %d not reached by paging back", i)
		}
	}
}
