package roomserver

import (
	"context"
	"errors"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// TestJoinRemoteRoomThenFollowIt plays the part of the federation API: a
// room lives on another server; we store its state as outliers, our join
// at that state, then new events by their prev events.
func TestJoinRemoteRoomThenFollowIt(t *testing.T) {
	for _, version := range []string{"1", "10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
				ctx := context.Background()
				rs := newRoomserver(t, db)
				remote := testroom.NewServer(t, "remote.test")
				local := testroom.NewServer(t, "test.local")
				carol, dave := remote.User("carol"), remote.User("dave")
				alice := local.User("alice")
				room := testroom.New(t, version, carol).Join(dave).Send(carol, "before alice")

				// The join: state and auth chain as outliers, then the join at that state.
				stateBefore := room.State().Events()
				room.Join(alice)
				join := room.Last()
				if err := rs.InputOutliers(ctx, stateBefore); err != nil {
					t.Fatal(err)
				}
				res, err := rs.InputEventWithState(ctx, join, stateBefore)
				if err != nil || res.Status != api.InputAccepted {
					t.Fatalf("join: %+v %v", res, err)
				}
				if m, _ := rs.Membership(ctx, room.ID(), alice.ID()); m.Membership != "join" {
					t.Fatalf("alice's membership = %q", m.Membership)
				}

				// A message after the join follows from its prev event.
				room.Send(dave, "hello alice")
				res, err = rs.InputRemoteEvent(ctx, room.Last())
				if err != nil || res.Status != api.InputAccepted {
					t.Fatalf("message: %+v %v", res, err)
				}
				// Alice can now reply locally, on top of the remote event.
				reply, err := send(t, rs, room.ID(), alice.ID(), "m.room.message", nil, map[string]string{"body": "hi dave"})
				if err != nil {
					t.Fatalf("local reply: %v", err)
				}
				if prevs := reply.PrevEventIDs(); len(prevs) != 1 || prevs[0] != room.Last().EventID() {
					t.Fatalf("reply's prev events %v, want the remote message", prevs)
				}

				// An event whose prev event is unknown is refused with what to fetch.
				gap := room.Send(carol, "missed").Last()
				after := room.Send(carol, "after the gap").Last()
				_, err = rs.InputRemoteEvent(ctx, after)
				var missing *api.MissingPrevEventsError
				if !errors.As(err, &missing) || len(missing.EventIDs) != 1 || missing.EventIDs[0] != gap.EventID() {
					t.Fatalf("gap: err = %v", err)
				}
				// Filling it in order works; storing twice changes nothing.
				for _, ev := range []gomatrixserverlib.PDU{gap, after, after} {
					if res, err := rs.InputRemoteEvent(ctx, ev); err != nil || res.Status != api.InputAccepted {
						t.Fatalf("fill %s: %+v %v", ev.EventID(), res, err)
					}
				}
				out, _ := rs.OutputSince(ctx, 0, 100)
				if last := out[len(out)-1]; last.Event.EventID() != after.EventID() {
					t.Fatalf("stream ends with %s, want %s", last.Event.EventID(), after.EventID())
				}
			})
		})
	}
}

func TestRemoteEventsRejectedAndSoftFailed(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rs := newRoomserver(t, db)
		remote := testroom.NewServer(t, "remote.test")
		carol, mallory := remote.User("carol"), remote.User("mallory")
		room := testroom.New(t, "12", carol).Join(mallory)
		for _, ev := range room.Events() {
			if _, err := rs.InputRemoteEvent(ctx, ev); err != nil {
				t.Fatalf("%s: %v", ev.Type(), err)
			}
		}
		// Mallory tries to raise his power: the auth rules reject it, built
		// by hand since the builder refuses disallowed events.
		evil := room.Fork().Event(mallory, "m.room.power_levels", testroom.StateKey(""),
			map[string]any{"users": map[string]int{mallory.ID(): 100}}, testroom.Rejected())
		res, err := rs.InputRemoteEvent(ctx, evil)
		if err != nil || res.Status != api.InputRejected {
			t.Fatalf("forged power levels: %+v %v", res, err)
		}
		if pl, _ := rs.CurrentStateEvent(ctx, room.ID(), "m.room.power_levels", ""); gjson.GetBytes(pl.Content(), "users."+gjson.Escape(mallory.ID())).Exists() {
			t.Fatal("a rejected event changed the state")
		}
		if _, err := rs.Event(ctx, evil.EventID()); !errors.Is(err, api.ErrEventNotFound) {
			t.Fatal("a rejected event is served")
		}

		// Soft fail: mallory speaks on a branch from before his ban.
		before := room.Last().EventID()
		room.Ban(carol, mallory)
		if _, err := rs.InputRemoteEvent(ctx, room.Last()); err != nil {
			t.Fatal(err)
		}
		late := room.At(before).Event(mallory, "m.room.message", nil, map[string]string{"body": "sneaky"})
		res, err = rs.InputRemoteEvent(ctx, late)
		if err != nil || res.Status != api.InputSoftFailed {
			t.Fatalf("message from a banned user on an old branch: %+v %v", res, err)
		}
	})
}
