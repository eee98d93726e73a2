package federationapi_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/storage"
)

// Transactions between real servers, both ways. Rooms are shared without
// the join handshake: txShareRoom plays its outcome.

// txShareRoom makes a user of b a member of a room on a, as a join over
// federation would: the join, built and signed by b, goes into a's
// roomserver as another server's event, and b stores the room's state
// before it (with its auth chain) as outliers and the join at that state.
func txShareRoom(t *testing.T, a, b *testserver.Server, roomID, userID string) {
	t.Helper()
	ctx := context.Background()
	ars, brs := a.Server.Roomserver, b.Server.Roomserver
	version, err := ars.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(version)
	state, err := ars.CurrentState(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	prevs, err := ars.ForwardExtremities(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	prevEvents, err := ars.StoredEvents(ctx, prevs)
	if err != nil {
		t.Fatal(err)
	}
	var depth int64
	for _, p := range prevEvents {
		depth = max(depth, p.Depth()+1)
	}
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID,
		Content: spec.RawJSON(`{"membership":"join"}`), PrevEvents: prevs, Depth: depth,
	}
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(proto)
	if err != nil {
		t.Fatal(err)
	}
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := needed.AuthEventReferences(provider)
	if err != nil {
		t.Fatal(err)
	}
	if verImpl.DomainlessRoomIDs() {
		refs = slices.DeleteFunc(refs, func(id string) bool { return id == "$"+roomID[1:] })
	}
	proto.AuthEvents = refs
	key := txServerKey(b)
	join, err := verImpl.NewEventBuilderFromProtoEvent(proto).Build(time.Now(), key.Name, key.KeyID, key.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := ars.InputRemoteEvent(ctx, join); err != nil || res.Status != 0 {
		t.Fatalf("join on %s: %+v %v", a.ServerName(), res, err)
	}

	// The auth chain of the state, from a's storage.
	events := map[string]gomatrixserverlib.PDU{}
	var queue []string
	for _, ev := range state {
		events[ev.EventID()] = ev
		queue = append(queue, ev.AuthEventIDs()...)
	}
	for len(queue) > 0 {
		got, err := ars.StoredEvents(ctx, queue)
		if err != nil {
			t.Fatal(err)
		}
		queue = nil
		for id, ev := range got {
			if events[id] == nil {
				events[id] = ev
				queue = append(queue, ev.AuthEventIDs()...)
			}
		}
	}
	outliers := make([]gomatrixserverlib.PDU, 0, len(events))
	for _, ev := range events {
		outliers = append(outliers, ev)
	}
	if err := brs.InputOutliers(ctx, outliers); err != nil {
		t.Fatal(err)
	}
	if res, err := brs.InputEventWithState(ctx, join, state); err != nil || res.Status != 0 {
		t.Fatalf("join on %s: %+v %v", b.ServerName(), res, err)
	}
}

// txSend sends a message through the client API and returns its event ID.
func txSend(t *testing.T, s *testserver.Server, u *testserver.User, roomID, body string) string {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/%d", url.PathEscape(roomID), time.Now().UnixNano())
	return s.MustOK("PUT", path, u.AccessToken, map[string]string{"msgtype": "m.text", "body": body}).Get("event_id").Str
}

// txTwoServers has alice on a and bob on b in alice's room.
func txTwoServers(t *testing.T) (a, b *testserver.Server, alice, bob *testserver.User, roomID string) {
	servers := testserver.NewFederated(t, 2)
	a, b = servers[0], servers[1]
	alice, bob = a.Register("alice", "password1234"), b.Register("bob", "password1234")
	roomID = a.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").Str
	txShareRoom(t, a, b, roomID, bob.UserID)
	return a, b, alice, bob, roomID
}

func TestTransactionsBetweenServers(t *testing.T) {
	a, b, alice, bob, roomID := txTwoServers(t)
	var aliceSince, bobSince string
	txSyncUntil(t, a, alice, &aliceSince, "alice's first sync", func(gjson.Result) bool { return true })

	// Messages, in order, both ways.
	for _, body := range []string{"m1", "m2", "m3"} {
		txSend(t, a, alice, roomID, body)
	}
	if got := txMessages(t, b, bob, &bobSince, roomID, 3); !slices.Equal(got, []string{"m1", "m2", "m3"}) {
		t.Fatalf("bob got %v", got)
	}
	txSend(t, b, bob, roomID, "r1")
	r2 := txSend(t, b, bob, roomID, "r2")
	if got := txMessages(t, a, alice, &aliceSince, roomID, 5); !slices.Equal(got, []string{"m1", "m2", "m3", "r1", "r2"}) {
		t.Fatalf("alice got %v", got)
	}

	// Typing, A to B.
	a.MustOK("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(alice.UserID), alice.AccessToken,
		map[string]any{"typing": true, "timeout": 30000})
	txEphemeral(t, b, bob, &bobSince, roomID, "m.typing", func(c gjson.Result) bool {
		return slices.ContainsFunc(c.Get("user_ids").Array(), func(u gjson.Result) bool { return u.Str == alice.UserID })
	})

	// A read receipt, B to A.
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/receipt/m.read/"+url.PathEscape(r2), bob.AccessToken, map[string]any{})
	txEphemeral(t, a, alice, &aliceSince, roomID, "m.receipt", func(c gjson.Result) bool {
		return c.Get(gjson.Escape(r2) + ".m\\.read." + gjson.Escape(bob.UserID)).Exists()
	})

	// Presence, A to B.
	a.MustOK("PUT", "/_matrix/client/v3/presence/"+url.PathEscape(alice.UserID)+"/status", alice.AccessToken,
		map[string]any{"presence": "online", "status_msg": "on server A"})
	txSyncUntil(t, b, bob, &bobSince, "alice's presence", func(r gjson.Result) bool {
		return slices.ContainsFunc(r.Get("presence.events").Array(), func(ev gjson.Result) bool {
			return ev.Get("sender").Str == alice.UserID && ev.Get("content.status_msg").Str == "on server A"
		})
	})

	// To-device, A to B, exactly once although the client sends twice.
	body := map[string]any{"messages": map[string]any{bob.UserID: map[string]any{bob.DeviceID: map[string]string{"text": "psst"}}}}
	a.MustOK("PUT", "/_matrix/client/v3/sendToDevice/m.test/td1", alice.AccessToken, body)
	a.MustOK("PUT", "/_matrix/client/v3/sendToDevice/m.test/td1", alice.AccessToken, body)
	var got []string
	txSyncUntil(t, b, bob, &bobSince, "the to-device message", func(r gjson.Result) bool {
		for _, ev := range r.Get("to_device.events").Array() {
			if ev.Get("sender").Str == alice.UserID {
				got = append(got, ev.Get("content.text").Str)
			}
		}
		return len(got) > 0
	})
	time.Sleep(300 * time.Millisecond)
	txSyncUntil(t, b, bob, &bobSince, "nothing more", func(r gjson.Result) bool {
		for _, ev := range r.Get("to_device.events").Array() {
			got = append(got, ev.Get("content.text").Str)
		}
		return true
	})
	if !slices.Equal(got, []string{"psst"}) {
		t.Fatalf("bob's device got %v", got)
	}
}

func TestTransactionsReachAServerThatWasDown(t *testing.T) {
	a, b, alice, bob, roomID := txTwoServers(t)
	var bobSince string
	txSend(t, a, alice, roomID, "before")
	if got := txMessages(t, b, bob, &bobSince, roomID, 1); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("bob got %v", got)
	}

	b.Stop()
	txSend(t, a, alice, roomID, "while down 1")
	txSend(t, a, alice, roomID, "while down 2")
	time.Sleep(200 * time.Millisecond) // a tries, and fails
	// a restarts meanwhile: its queue is in its database.
	a.Restart()
	txSend(t, a, alice, roomID, "while down 3")
	b.Restart()
	if got := txMessages(t, b, bob, &bobSince, roomID, 3); !slices.Equal(got, []string{"while down 1", "while down 2", "while down 3"}) {
		t.Fatalf("bob got %v", got)
	}
}

func TestGapFilledFromAnotherServer(t *testing.T) {
	a, b, alice, bob, roomID := txTwoServers(t)
	var bobSince string
	txSend(t, a, alice, roomID, "before")
	if got := txMessages(t, b, bob, &bobSince, roomID, 1); !slices.Equal(got, []string{"before"}) {
		t.Fatalf("bob got %v", got)
	}
	// b misses two events: they are sent while it is down and then
	// dropped from a's queue.
	b.Stop()
	txSend(t, a, alice, roomID, "missed 1")
	txSend(t, a, alice, roomID, "missed 2")
	a.Stop()
	db, err := storage.Open(a.Config.DatabaseConn())
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"federationapi_queue_pdus", "federationapi_queue_edus"} {
		if _, err := db.Writer().ExecContext(context.Background(), "DELETE FROM "+table); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	a.Restart()
	b.Restart()
	// The next event has them as prev events: b asks a for them
	// (/get_missing_events).
	txSend(t, a, alice, roomID, "after")
	if got := txMessages(t, b, bob, &bobSince, roomID, 3); !slices.Equal(got, []string{"missed 1", "missed 2", "after"}) {
		t.Fatalf("bob got %v", got)
	}
}

func TestTransactionsAmongThreeServers(t *testing.T) {
	servers := testserver.NewFederated(t, 3)
	a, b, c := servers[0], servers[1], servers[2]
	alice, bob, carol := a.Register("alice", "password1234"), b.Register("bob", "password1234"), c.Register("carol", "password1234")
	roomID := a.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").Str
	txShareRoom(t, a, b, roomID, bob.UserID)
	// b learns of carol's join from c, whose sender passes it on.
	txShareRoom(t, a, c, roomID, carol.UserID)
	var aliceSince, bobSince string
	txSyncUntil(t, b, bob, &bobSince, "carol's join on b", func(r gjson.Result) bool {
		for _, ev := range r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			if ev.Get("type").Str == "m.room.member" && ev.Get("state_key").Str == carol.UserID {
				return true
			}
		}
		return false
	})
	txSyncUntil(t, a, alice, &aliceSince, "alice's first sync", func(gjson.Result) bool { return true })
	txSend(t, c, carol, roomID, "from c")
	txSend(t, b, bob, roomID, "from b")
	if got := txMessages(t, a, alice, &aliceSince, roomID, 2); !slices.Contains(got, "from c") || !slices.Contains(got, "from b") {
		t.Fatalf("alice got %v", got)
	}
	var carolSince string
	txSyncUntil(t, c, carol, &carolSince, "bob's message on c", func(r gjson.Result) bool {
		for _, ev := range r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			if ev.Get("content.body").Str == "from b" {
				return true
			}
		}
		return false
	})
	if got := txMessages(t, b, bob, &bobSince, roomID, 2); !slices.Contains(got, "from c") {
		t.Fatalf("bob got %v", got)
	}
}
