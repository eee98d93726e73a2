package roomserver

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

const (
	alice = "@alice:test.local"
	bob   = "@bob:test.local"
)

func newRoomserver(t *testing.T, db *storage.DB) *Roomserver {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	rs, err := New(context.Background(), db, "test.local", "ed25519:t", key)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func stateContent(t *testing.T, rs *Roomserver, roomID, evType, key string) gjson.Result {
	t.Helper()
	ev, err := rs.CurrentStateEvent(context.Background(), roomID, evType, key)
	if err != nil {
		t.Fatal(err)
	}
	if ev == nil {
		return gjson.Result{}
	}
	return gjson.ParseBytes(ev.Content())
}

// publicRoom is the state a public_chat room starts with.
func publicRoom(version gomatrixserverlib.RoomVersion, creator string) api.CreateRoomRequest {
	users := map[string]int{creator: 100}
	if version == gomatrixserverlib.RoomVersionV12 {
		users = map[string]int{} // creators have infinite power and are not listed
	}
	return api.CreateRoomRequest{
		Version: version, Creator: creator,
		InitialState: []api.StateEvent{
			{Type: "m.room.member", StateKey: creator, Content: map[string]any{"membership": "join"}},
			{Type: "m.room.power_levels", Content: map[string]any{"users": users, "users_default": 0, "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0}},
			{Type: "m.room.join_rules", Content: map[string]any{"join_rule": "public"}},
			{Type: "m.room.history_visibility", Content: map[string]any{"history_visibility": "shared"}},
		},
	}
}

func send(t *testing.T, rs *Roomserver, roomID, sender, evType string, stateKey *string, content any) (gomatrixserverlib.PDU, error) {
	t.Helper()
	raw, _ := json.Marshal(content)
	return rs.SendEvent(context.Background(), api.NewEvent{RoomID: roomID, Sender: sender, Type: evType, StateKey: stateKey, Content: raw})
}

func member(t *testing.T, rs *Roomserver, roomID, sender, target, membership string) error {
	t.Helper()
	_, err := send(t, rs, roomID, sender, "m.room.member", &target, map[string]string{"membership": membership})
	return err
}

func TestRoomLifecycleInEveryVersion(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		rs := newRoomserver(t, db)
		ctx := context.Background()
		for v := 1; v <= 12; v++ {
			version := gomatrixserverlib.RoomVersion(fmt.Sprint(v))
			t.Run("v"+string(version), func(t *testing.T) {
				roomID, err := rs.CreateRoom(ctx, publicRoom(version, alice))
				if err != nil {
					t.Fatal(err)
				}
				create, _ := rs.CurrentStateEvent(ctx, roomID, "m.room.create", "")
				if create == nil || gjson.GetBytes(create.Content(), "room_version").String() != string(version) {
					t.Fatalf("create event: %v", create)
				}
				if version == "12" && roomID != "!"+create.EventID()[1:] {
					t.Fatalf("v12 room ID %s is not the create event's hash %s", roomID, create.EventID())
				}
				if err := member(t, rs, roomID, bob, bob, "join"); err != nil {
					t.Fatalf("bob joins a public room: %v", err)
				}
				msg, err := send(t, rs, roomID, bob, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi"})
				if err != nil {
					t.Fatal(err)
				}
				// Bob may not change power levels.
				pl := ""
				_, err = send(t, rs, roomID, bob, "m.room.power_levels", &pl, map[string]any{"users": map[string]int{bob: 100}})
				var na *api.NotAllowedError
				if !errors.As(err, &na) {
					t.Fatalf("bob raised his power: err = %v", err)
				}
				// Alice bans bob; he cannot speak any more.
				if err := member(t, rs, roomID, alice, bob, "ban"); err != nil {
					t.Fatal(err)
				}
				if _, err := send(t, rs, roomID, bob, "m.room.message", nil, map[string]string{"body": "still here?"}); !errors.As(err, &na) {
					t.Fatalf("banned bob sent a message: err = %v", err)
				}
				if err := member(t, rs, roomID, bob, bob, "join"); !errors.As(err, &na) {
					t.Fatalf("banned bob rejoined: err = %v", err)
				}
				m, err := rs.Membership(ctx, roomID, bob)
				if err != nil || m.Membership != "ban" {
					t.Fatalf("bob's membership = %+v, %v", m, err)
				}
				// Alice redacts bob's message: its content is gone wherever it is read.
				if _, err := rs.SendEvent(ctx, api.NewEvent{RoomID: roomID, Sender: alice, Type: "m.room.redaction", Redacts: msg.EventID(), Content: json.RawMessage(`{"reason":"spam"}`)}); err != nil {
					t.Fatal(err)
				}
				got, err := rs.Event(ctx, msg.EventID())
				if err != nil {
					t.Fatal(err)
				}
				if gjson.GetBytes(got.Content(), "body").Exists() || !got.Redacted() {
					t.Fatalf("redacted event still has content: %s", got.JSON())
				}
				if !gjson.GetBytes(got.Unsigned(), "redacted_because").Exists() {
					t.Fatalf("no redacted_because: %s", got.JSON())
				}
			})
		}
	})
}

func TestRedactingOthersNeedsPower(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		rs := newRoomserver(t, db)
		ctx := context.Background()
		roomID, err := rs.CreateRoom(ctx, publicRoom("10", alice))
		if err != nil {
			t.Fatal(err)
		}
		if err := member(t, rs, roomID, bob, bob, "join"); err != nil {
			t.Fatal(err)
		}
		msg, _ := send(t, rs, roomID, alice, "m.room.message", nil, map[string]string{"body": "mine"})
		_, err = rs.SendEvent(ctx, api.NewEvent{RoomID: roomID, Sender: bob, Type: "m.room.redaction", Redacts: msg.EventID(), Content: json.RawMessage(`{}`)})
		var na *api.NotAllowedError
		if !errors.As(err, &na) {
			t.Fatalf("bob redacted alice's event: %v", err)
		}
		own, _ := send(t, rs, roomID, bob, "m.room.message", nil, map[string]string{"body": "oops"})
		if _, err := rs.SendEvent(ctx, api.NewEvent{RoomID: roomID, Sender: bob, Type: "m.room.redaction", Redacts: own.EventID(), Content: json.RawMessage(`{}`)}); err != nil {
			t.Fatalf("bob could not redact his own event: %v", err)
		}
	})
}

func TestOutputStreamOrderAndStateChanges(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		rs := newRoomserver(t, db)
		ctx := context.Background()
		start, _ := rs.LatestPosition(ctx)
		wake := rs.Notify(start)
		roomID, err := rs.CreateRoom(ctx, publicRoom("11", alice))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-wake:
		case <-time.After(5 * time.Second):
			t.Fatal("Notify did not fire for new events")
		}
		name := ""
		n1, _ := send(t, rs, roomID, alice, "m.room.name", &name, map[string]string{"name": "one"})
		n2, _ := send(t, rs, roomID, alice, "m.room.name", &name, map[string]string{"name": "two"})
		out, err := rs.OutputSince(ctx, start, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 7 { // create, join, power levels, join rules, history visibility, two names
			t.Fatalf("%d output events, want 7", len(out))
		}
		for i := 1; i < len(out); i++ {
			if out[i].Position <= out[i-1].Position {
				t.Fatalf("positions not increasing: %d then %d", out[i-1].Position, out[i].Position)
			}
		}
		last := out[len(out)-1]
		if last.Event.EventID() != n2.EventID() || len(last.AddsState) != 1 || last.AddsState[0] != n2.EventID() ||
			len(last.RemovesState) != 1 || last.RemovesState[0] != n1.EventID() {
			t.Fatalf("last output: %+v", last)
		}
		if stateContent(t, rs, roomID, "m.room.name", "").Get("name").String() != "two" {
			t.Fatal("current name is not the latest")
		}
		// The stream survives a restart of the roomserver.
		rs2 := newRoomserver(t, db)
		again, err := rs2.OutputSince(ctx, start, 100)
		if err != nil || len(again) != 7 {
			t.Fatalf("after restart: %d events, %v", len(again), err)
		}
		if pos, _ := rs2.LatestPosition(ctx); pos != last.Position {
			t.Fatalf("latest position after restart = %d, want %d", pos, last.Position)
		}
	})
}

func TestEventTooLarge(t *testing.T) {
	db, err := storage.Open(t.TempDir() + "/x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rs := newRoomserver(t, db)
	roomID, err := rs.CreateRoom(context.Background(), publicRoom("12", alice))
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 70000)
	for i := range big {
		big[i] = 'a'
	}
	_, err = send(t, rs, roomID, alice, "m.room.message", nil, map[string]string{"body": string(big)})
	var tl *api.TooLargeError
	if !errors.As(err, &tl) {
		t.Fatalf("70 kB event: err = %v", err)
	}
	if _, err := rs.CurrentState(context.Background(), "!nope:test.local"); !errors.Is(err, api.ErrRoomNotFound) {
		t.Fatalf("unknown room: %v", err)
	}
	_ = spec.MRoomCreate
}

func TestTransactionIDsMakeSendsIdempotent(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		rs := newRoomserver(t, db)
		ctx := context.Background()
		roomID, err := rs.CreateRoom(ctx, publicRoom("12", alice))
		if err != nil {
			t.Fatal(err)
		}
		start, _ := rs.LatestPosition(ctx)
		ev := api.NewEvent{RoomID: roomID, Sender: alice, Type: "m.room.message", Content: json.RawMessage(`{"body":"once"}`), TxnID: "t1", DeviceID: "D1"}
		first, err := rs.SendEvent(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		again, err := rs.SendEvent(ctx, ev)
		if err != nil || again.EventID() != first.EventID() {
			t.Fatalf("retransmission made %v (%v), want %s", again, err, first.EventID())
		}
		// Another device's transaction with the same ID is a new event.
		ev.DeviceID = "D2"
		other, err := rs.SendEvent(ctx, ev)
		if err != nil || other.EventID() == first.EventID() {
			t.Fatalf("other device: %v, %v", other, err)
		}
		out, err := rs.OutputSince(ctx, start, 10)
		if err != nil || len(out) != 2 {
			t.Fatalf("output: %d events, %v", len(out), err)
		}
		if out[0].TxnID != "t1" || out[0].DeviceID != "D1" || out[1].DeviceID != "D2" {
			t.Fatalf("output lacks transaction IDs: %+v", out)
		}
	})
}

func TestAliases(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		rs := newRoomserver(t, db)
		ctx := context.Background()
		if err := rs.SetAlias(ctx, "#a:test.local", "!r:test.local", alice); err != nil {
			t.Fatal(err)
		}
		if err := rs.SetAlias(ctx, "#a:test.local", "!other:test.local", bob); !errors.Is(err, api.ErrAliasInUse) {
			t.Fatalf("duplicate alias: %v", err)
		}
		if id, _ := rs.ResolveAlias(ctx, "#a:test.local"); id != "!r:test.local" {
			t.Fatalf("resolve = %q", id)
		}
		if c, _ := rs.AliasCreator(ctx, "#a:test.local"); c != alice {
			t.Fatalf("creator = %q", c)
		}
		if list, _ := rs.RoomAliases(ctx, "!r:test.local"); len(list) != 1 {
			t.Fatalf("room aliases = %v", list)
		}
		if err := rs.RemoveAlias(ctx, "#a:test.local"); err != nil {
			t.Fatal(err)
		}
		if err := rs.RemoveAlias(ctx, "#a:test.local"); !errors.Is(err, api.ErrAliasNotFound) {
			t.Fatalf("second removal: %v", err)
		}
		if id, err := rs.ResolveAlias(ctx, "#a:test.local"); id != "" || err != nil {
			t.Fatalf("removed alias resolves to %q, %v", id, err)
		}
	})
}

func TestParallelV12RoomsGetDistinctIDs(t *testing.T) {
	db, err := storage.Open(t.TempDir() + "/x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rs := newRoomserver(t, db)
	ids := make(chan string, 8)
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func() {
			id, err := rs.CreateRoom(context.Background(), publicRoom("12", alice))
			ids <- id
			errs <- err
		}()
	}
	seen := map[string]bool{}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("parallel create: %v", err)
		}
		id := <-ids
		if seen[id] {
			t.Fatalf("two rooms got the ID %s", id)
		}
		seen[id] = true
	}
}

func TestSettingTheSameStateTwiceIsIdempotent(t *testing.T) {
	db, err := storage.Open(t.TempDir() + "/x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rs := newRoomserver(t, db)
	roomID, err := rs.CreateRoom(context.Background(), publicRoom("12", alice))
	if err != nil {
		t.Fatal(err)
	}
	key := ""
	first, err := send(t, rs, roomID, alice, "m.room.topic", &key, map[string]string{"topic": "same"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := send(t, rs, roomID, alice, "m.room.topic", &key, map[string]string{"topic": "same"})
	if err != nil || again.EventID() != first.EventID() {
		t.Fatalf("second identical topic: %v %v", again, err)
	}
	changed, _ := send(t, rs, roomID, alice, "m.room.topic", &key, map[string]string{"topic": "new"})
	if changed.EventID() == first.EventID() {
		t.Fatal("a different topic returned the old event")
	}
}
