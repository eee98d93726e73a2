package roomserver

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// sameAsDatabase checks that the output stream read through the cache is
// the stream the database holds, from every starting position.
func sameAsDatabase(t *testing.T, rs *Roomserver) {
	t.Helper()
	ctx := context.Background()
	upTo := rs.stream.latest()
	for from := rs.recent.floor; from < upTo; from++ {
		cached, ok := rs.recent.since(from, upTo, 1000)
		if !ok {
			t.Fatalf("the cache cannot answer from %d (floor %d)", from, rs.recent.floor)
		}
		stored, err := rs.outputFromDB(ctx, from, upTo, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(cached) != len(stored) {
			t.Fatalf("from %d: %d cached entries, %d stored", from, len(cached), len(stored))
		}
		for i := range stored {
			c, s := cached[i], stored[i]
			if c.Position != s.Position || c.RoomID != s.RoomID || c.Event.EventID() != s.Event.EventID() ||
				c.TxnID != s.TxnID || c.DeviceID != s.DeviceID ||
				!slices.Equal(c.AddsState, s.AddsState) || !slices.Equal(c.RemovesState, s.RemovesState) {
				t.Fatalf("from %d, entry %d:\ncached %+v\nstored %+v", from, i, c, s)
			}
			// A redacted event is stored redacted; the cache keeps it as it
			// was output, as a consumer that read it at once saw it.
			redacted := s.Event.Type() == "m.room.message" && !gjson.GetBytes(s.Event.Content(), "body").Exists()
			if string(c.Event.JSON()) != string(s.Event.JSON()) && !redacted {
				t.Fatalf("entry %d: cached event differs from the stored one", i)
			}
		}
	}
}

func TestRecentOutputsMatchTheDatabase(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rs := newRoomserver(t, db)
		roomID, err := rs.CreateRoom(ctx, publicRoom("11", alice))
		if err != nil {
			t.Fatal(err)
		}
		if err := member(t, rs, roomID, bob, bob, "join"); err != nil {
			t.Fatal(err)
		}
		// A send with a client transaction ID carries it on its entry.
		if _, err := rs.SendEvent(ctx, api.NewEvent{RoomID: roomID, Sender: bob, Type: "m.room.message",
			Content: []byte(`{"body":"hi","msgtype":"m.text"}`), TxnID: "t1", DeviceID: "DEV"}); err != nil {
			t.Fatal(err)
		}
		name := ""
		if _, err := send(t, rs, roomID, alice, "m.room.name", &name, map[string]string{"name": "one"}); err != nil {
			t.Fatal(err)
		}
		// Refused events allocate no entry; a transaction that rolls back
		// leaves a gap.
		if _, err := send(t, rs, roomID, bob, "m.room.name", &name, map[string]string{"name": "bob's"}); err == nil {
			t.Fatal("bob may not rename the room")
		}
		boom := errors.New("roll back")
		if err := rs.inTx(ctx, func(tx *txn) error {
			tx.positions = append(tx.positions, rs.stream.allocate())
			return boom
		}); !errors.Is(err, boom) {
			t.Fatal(err)
		}
		if rs.recent.floor != 0 {
			t.Fatalf("the cache gave up on entries after a refused event or a rollback (floor %d)", rs.recent.floor)
		}
		msg, err := send(t, rs, roomID, bob, "m.room.message", nil, map[string]string{"body": "redact me", "msgtype": "m.text"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rs.SendEvent(ctx, api.NewEvent{RoomID: roomID, Sender: alice, Type: "m.room.redaction", Redacts: msg.EventID(), Content: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if err := member(t, rs, roomID, bob, bob, "leave"); err != nil {
			t.Fatal(err)
		}
		sameAsDatabase(t, rs)
		out, err := rs.OutputSince(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var withTxn int
		for _, o := range out {
			if o.TxnID == "t1" && o.DeviceID == "DEV" {
				withTxn++
			}
		}
		if withTxn != 1 {
			t.Fatalf("%d entries carry the client transaction, want 1", withTxn)
		}
	})
}

func TestRecentOutputsStayBounded(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rs := newRoomserver(t, db)
		roomID, err := rs.CreateRoom(ctx, publicRoom("11", alice))
		if err != nil {
			t.Fatal(err)
		}
		for range recentOutputMaxEntries + 20 {
			if _, err := send(t, rs, roomID, alice, "m.room.message", nil, map[string]string{"body": "x", "msgtype": "m.text"}); err != nil {
				t.Fatal(err)
			}
		}
		if n := len(rs.recent.entries); n > recentOutputMaxEntries {
			t.Fatalf("%d entries kept, bound %d", n, recentOutputMaxEntries)
		}
		// The oldest entries come from the database, the newest from the
		// cache, and both together are the whole stream.
		if _, ok := rs.recent.since(0, rs.stream.latest(), 10); ok {
			t.Fatal("the cache answered for entries it dropped")
		}
		out, err := rs.OutputSince(ctx, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		if want := 5 + recentOutputMaxEntries + 20; len(out) != want {
			t.Fatalf("%d entries in the stream, want %d", len(out), want)
		}
		sameAsDatabase(t, rs)
	})
}

// A failed commit may still have committed: its positions are then read
// from the database.
func TestRecentOutputsForgetAfterFailure(t *testing.T) {
	c := newRecentOutputs(0)
	c.forget([]int64{3, 1})
	if c.floor != 3 {
		t.Fatalf("floor %d, want 3", c.floor)
	}
	if _, ok := c.since(2, 5, 10); ok {
		t.Fatal("answered from before the floor")
	}
	if out, ok := c.since(3, 5, 10); !ok || len(out) != 0 {
		t.Fatalf("from the floor: %v %v", out, ok)
	}
}
