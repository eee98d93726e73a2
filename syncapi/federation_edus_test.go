package syncapi_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// remoteJoin stores a join of a remote user in a local room, as the
// federation API would.
func remoteJoin(t *testing.T, s *testserver.Server, roomID, userID string) {
	t.Helper()
	ctx := context.Background()
	rs := s.Server.Roomserver
	version, _ := rs.RoomVersion(ctx, roomID)
	verImpl := gomatrixserverlib.MustGetRoomVersion(version)
	state, err := rs.CurrentState(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	prevs, _ := rs.ForwardExtremities(ctx, roomID)
	prevEvents, _ := rs.StoredEvents(ctx, prevs)
	var depth int64
	for _, p := range prevEvents {
		depth = max(depth, p.Depth()+1)
	}
	proto := &gomatrixserverlib.ProtoEvent{SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID,
		Content: spec.RawJSON(`{"membership":"join"}`), PrevEvents: prevs, Depth: depth}
	needed, _ := gomatrixserverlib.StateNeededForProtoEvent(proto)
	provider, _ := gomatrixserverlib.NewAuthEvents(state)
	refs, _ := needed.AuthEventReferences(provider)
	if verImpl.DomainlessRoomIDs() {
		refs = slices.DeleteFunc(refs, func(id string) bool { return id == "$"+roomID[1:] })
	}
	proto.AuthEvents = refs
	_, key, _ := ed25519.GenerateKey(nil)
	server, _ := spec.NewUserID(userID, true)
	join, err := verImpl.NewEventBuilderFromProtoEvent(proto).Build(time.Now(), server.Domain(), "ed25519:x", key)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := rs.InputRemoteEvent(ctx, join); err != nil || res.Status != 0 {
		t.Fatalf("join: %+v %v", res, err)
	}
}

// edusSyncUntil syncs until cond holds for one response.
func edusSyncUntil(t *testing.T, s *testserver.Server, u *testserver.User, since *string, what string, cond func(gjson.Result) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := syncNow(s, u, *since)
		*since = r.Get("next_batch").Str
		if cond(r) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRemoteEDUs(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		ctx := context.Background()
		sync := s.Server.Sync
		alice := s.Register("alice", "pw")
		roomID := s.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").Str
		const carol, stranger = "@carol:remote.example", "@stranger:remote.example"
		remoteJoin(t, s, roomID, carol)
		var since string
		edusSyncUntil(t, s, alice, &since, "carol's join", func(r gjson.Result) bool {
			return gjson.Get(r.Raw, "rooms.join."+gjson.Escape(roomID)+".timeline.events.#(state_key=="+carol+")").Exists()
		})
		room := "rooms.join." + gjson.Escape(roomID) + ".ephemeral.events"

		if err := sync.RemoteTyping(ctx, roomID, carol, true); err != nil {
			t.Fatal(err)
		}
		edusSyncUntil(t, s, alice, &since, "carol typing", func(r gjson.Result) bool {
			return r.Get(room+".#(type==m.typing).content.user_ids.0").Str == carol
		})

		if err := sync.RemoteReceipt(ctx, roomID, carol, "m.read", "", "$somewhere", 4321); err != nil {
			t.Fatal(err)
		}
		edusSyncUntil(t, s, alice, &since, "carol's receipt", func(r gjson.Result) bool {
			return r.Get(room+".#(type==m.receipt).content.\\$somewhere.m\\.read."+gjson.Escape(carol)+".ts").Int() == 4321
		})

		msg := "away"
		if err := sync.RemotePresence(ctx, stranger, "online", nil, 0, true); err != nil {
			t.Fatal(err)
		}
		if err := sync.RemotePresence(ctx, carol, "unavailable", &msg, 1000, false); err != nil {
			t.Fatal(err)
		}
		edusSyncUntil(t, s, alice, &since, "carol's presence", func(r gjson.Result) bool {
			for _, ev := range r.Get("presence.events").Array() {
				if ev.Get("sender").Str == stranger {
					t.Fatalf("presence of a user sharing no room: %s", ev.Raw)
				}
				if ev.Get("sender").Str == carol && ev.Get("content.presence").Str == "unavailable" && ev.Get("content.status_msg").Str == msg {
					return true
				}
			}
			return false
		})

		msgs := map[string]map[string]json.RawMessage{alice.UserID: {"*": json.RawMessage(`{"n":1}`)}}
		for range 2 {
			if err := sync.RemoteToDevice(ctx, carol, "m.test", "msg1", msgs); err != nil {
				t.Fatal(err)
			}
		}
		if err := sync.RemoteToDevice(ctx, alice.UserID, "m.test", "msg2", msgs); err == nil {
			t.Fatal("a to-device message from another server in a local user's name was taken")
		}
		var got int
		edusSyncUntil(t, s, alice, &since, "carol's to-device message", func(r gjson.Result) bool {
			got += int(r.Get("to_device.events.#").Int())
			return got > 0
		})
		if r := syncNow(s, alice, since); got != 1 || r.Get("to_device.events.#").Int() != 0 {
			t.Fatalf("to-device delivered %d times, then %s", got, r.Get("to_device").Raw)
		}
		for _, err := range []error{
			sync.RemoteTyping(ctx, roomID, alice.UserID, true),
			sync.RemoteReceipt(ctx, roomID, alice.UserID, "m.read", "", "$x", 1),
			sync.RemoteReceipt(ctx, roomID, carol, "m.read.private", "", "$x", 1),
			sync.RemotePresence(ctx, alice.UserID, "online", nil, 0, true),
		} {
			if err == nil {
				t.Fatal("an EDU about a local user, or a private receipt, from another server was taken")
			}
		}
	})
}
