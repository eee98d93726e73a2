package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// outputFor returns the stream entries of one event.
func outputFor(t *testing.T, rs *Roomserver, eventID string) []api.OutputEvent {
	t.Helper()
	out, err := rs.OutputSince(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	sameAsDatabase(t, rs)
	var found []api.OutputEvent
	for _, o := range out {
		if o.Event.EventID() == eventID {
			found = append(found, o)
		}
	}
	return found
}

func membershipOf(t *testing.T, rs *Roomserver, roomID, userID string) api.Membership {
	t.Helper()
	m, err := rs.Membership(context.Background(), roomID, userID)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestOutOfBandInviteThenRetire: an invite to a room this server is not
// in becomes the user's membership and a stream entry of its own; with
// the inviting server gone, the user retires it with a leave kept here.
func TestOutOfBandInviteThenRetire(t *testing.T) {
	for _, version := range []string{"1", "10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
				ctx := context.Background()
				rs := newRoomserver(t, db)
				carol := testroom.NewServer(t, "remote.test").User("carol")
				alice := testroom.NewServer(t, "test.local").User("alice")
				room := testroom.New(t, version, carol, testroom.JoinRule(spec.Invite))
				invite, err := room.Invite(carol, alice).Last().SetUnsigned(map[string]any{
					"invite_room_state": []map[string]any{{"type": "m.room.name", "state_key": "", "sender": carol.ID(), "content": map[string]string{"name": "Elsewhere"}}},
				})
				if err != nil {
					t.Fatal(err)
				}
				for range 2 { // the second time changes nothing
					if err := rs.InputOutOfBandMembership(ctx, invite); err != nil {
						t.Fatal(err)
					}
				}
				if m := membershipOf(t, rs, room.ID(), alice.ID()); m.Membership != spec.Invite || m.EventID != invite.EventID() {
					t.Fatalf("membership %+v", m)
				}
				out := outputFor(t, rs, invite.EventID())
				if len(out) != 1 || !slices.Equal(out[0].AddsState, []string{invite.EventID()}) || len(out[0].RemovesState) != 0 {
					t.Fatalf("stream: %+v", out)
				}
				if got := gjson.GetBytes(out[0].Event.Unsigned(), "invite_room_state.0.content.name").String(); got != "Elsewhere" {
					t.Fatalf("the stream lost the stripped state: %s", out[0].Event.Unsigned())
				}
				// The room's own state is untouched: nothing is known of it.
				if state, _ := rs.CurrentState(ctx, room.ID()); len(state) != 0 {
					t.Fatalf("current state %d events", len(state))
				}

				leave, err := rs.RetireMembership(ctx, room.ID(), alice.ID(), "not now")
				if err != nil {
					t.Fatal(err)
				}
				if m := membershipOf(t, rs, room.ID(), alice.ID()); m.Membership != spec.Leave || m.EventID != leave.EventID() {
					t.Fatalf("membership after retiring %+v", m)
				}
				out = outputFor(t, rs, leave.EventID())
				if len(out) != 1 || !slices.Equal(out[0].AddsState, []string{leave.EventID()}) || !slices.Equal(out[0].RemovesState, []string{invite.EventID()}) {
					t.Fatalf("stream: %+v", out)
				}
				if !slices.Equal(leave.PrevEventIDs(), []string{invite.EventID()}) || gjson.GetBytes(leave.Content(), "reason").String() != "not now" {
					t.Fatalf("leave %s", leave.JSON())
				}
				var na *api.NotAllowedError
				if _, err := rs.RetireMembership(ctx, room.ID(), alice.ID(), ""); !errors.As(err, &na) {
					t.Fatalf("retiring twice: %v", err)
				}
			})
		})
	}
}

// TestRemoteJoinAfterOutOfBandInviteAndRejoin: the invited user joins
// through the room's server; later, after leaving and missing what
// happened meanwhile, joins again at the new state, which
// InputEventWithState would soft-fail against the stale one.
func TestRemoteJoinAfterOutOfBandInviteAndRejoin(t *testing.T) {
	for _, version := range []string{"4", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
				ctx := context.Background()
				rs := newRoomserver(t, db)
				carol := testroom.NewServer(t, "remote.test").User("carol")
				alice := testroom.NewServer(t, "test.local").User("alice")
				room := testroom.New(t, version, carol, testroom.JoinRule(spec.Invite))
				if err := rs.InputOutOfBandMembership(ctx, reparsed(t, []gomatrixserverlib.PDU{room.Invite(carol, alice).Last()})[0]); err != nil {
					t.Fatal(err)
				}
				join := func() gomatrixserverlib.PDU {
					t.Helper()
					state := room.State().Events()
					room.Join(alice)
					ids := make([]string, len(state))
					for i, ev := range state {
						ids[i] = ev.EventID()
					}
					chain, err := room.AuthChain(ctx, ids)
					if err != nil {
						t.Fatal(err)
					}
					// (Parsed again: gomatrixserverlib's Sign, which the builder
					// uses for invites, returns version 12 events in a form that
					// forgets the create event in AuthEventIDs.)
					state = reparsed(t, state)
					if err := rs.InputOutliers(ctx, reparsed(t, append(chain, state...))); err != nil {
						t.Fatal(err)
					}
					res, err := rs.InputRemoteJoin(ctx, reparsed(t, []gomatrixserverlib.PDU{room.Last()})[0], state)
					if err != nil || res.Status != api.InputAccepted {
						t.Fatalf("join: %+v %v", res, err)
					}
					return room.Last()
				}
				first := join()
				if m := membershipOf(t, rs, room.ID(), alice.ID()); m.Membership != spec.Join {
					t.Fatalf("membership %+v", m)
				}
				// Two stream entries: the state before the join, then the join.
				out := outputFor(t, rs, first.EventID())
				if len(out) != 2 || len(out[0].AddsState) < 5 || slices.Contains(out[0].AddsState, first.EventID()) ||
					!slices.Equal(out[1].AddsState, []string{first.EventID()}) || len(out[1].RemovesState) != 1 {
					t.Fatalf("the join's stream entries: %+v", out)
				}

				// Alice leaves, and the room moves on without this server.
				if res, err := rs.InputRemoteEvent(ctx, room.Leave(alice).Last()); err != nil || res.Status != api.InputAccepted {
					t.Fatalf("leave: %+v %v", res, err)
				}
				room.SetState(carol, "m.room.topic", "", map[string]string{"topic": "while you were away"}).Invite(carol, alice)

				rejoin := join()
				if m := membershipOf(t, rs, room.ID(), alice.ID()); m.Membership != spec.Join || m.EventID != rejoin.EventID() {
					t.Fatalf("membership after rejoining %+v", m)
				}
				if topic, _ := rs.CurrentStateEvent(ctx, room.ID(), "m.room.topic", ""); topic == nil {
					t.Fatal("the rejoin did not bring the new state")
				}
				ext, err := rs.ForwardExtremities(ctx, room.ID())
				if err != nil || !slices.Equal(ext, []string{rejoin.EventID()}) {
					t.Fatalf("forward extremities %v %v, want only the rejoin", ext, err)
				}
			})
		})
	}
}

func TestMembershipTemplateAndUnstoredEvents(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rs := newRoomserver(t, db)
		alice := "@alice:test.local"
		roomID := createRoom(t, rs, alice, "10", spec.Public)
		bob := "@bob:remote.test"

		tmpl, version, err := rs.MembershipTemplate(ctx, roomID, bob, json.RawMessage(`{"membership":"join"}`))
		if err != nil || version != "10" {
			t.Fatalf("template: %v %q", err, version)
		}
		js := gjson.ParseBytes(tmpl)
		for _, k := range []string{"signatures", "hashes", "event_id", "unsigned"} {
			if js.Get(k).Exists() {
				t.Fatalf("the template has %s: %s", k, tmpl)
			}
		}
		if js.Get("sender").String() != bob || js.Get("state_key").String() != bob || js.Get("room_id").String() != roomID ||
			len(js.Get("prev_events").Array()) != 1 || len(js.Get("auth_events").Array()) < 3 || js.Get("depth").Int() < 2 {
			t.Fatalf("template %s", tmpl)
		}
		// A knock on a public room is refused by the auth rules.
		var na *api.NotAllowedError
		if _, _, err := rs.MembershipTemplate(ctx, roomID, bob, json.RawMessage(`{"membership":"knock"}`)); !errors.As(err, &na) {
			t.Fatalf("knock template for a public room: %v", err)
		}
		if _, _, err := rs.MembershipTemplate(ctx, "!nowhere:test.local", bob, json.RawMessage(`{"membership":"join"}`)); !errors.Is(err, api.ErrRoomNotFound) {
			t.Fatalf("unknown room: %v", err)
		}

		// An invite built and checked but not stored.
		invite, err := rs.BuildMembershipEvent(ctx, api.NewEvent{RoomID: roomID, Sender: alice, Type: spec.MRoomMember,
			StateKey: &bob, Content: json.RawMessage(`{"membership":"invite"}`)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rs.Event(ctx, invite.EventID()); !errors.Is(err, api.ErrEventNotFound) {
			t.Fatalf("the built event was stored: %v", err)
		}
		if res, err := rs.InputRemoteEvent(ctx, invite); err != nil || res.Status != api.InputAccepted {
			t.Fatalf("storing it: %+v %v", res, err)
		}
		if m := membershipOf(t, rs, roomID, bob); m.Membership != spec.Invite {
			t.Fatalf("membership %+v", m)
		}
		carol := "@carol:test.local"
		if _, err := rs.BuildMembershipEvent(ctx, api.NewEvent{RoomID: roomID, Sender: carol, Type: spec.MRoomMember,
			StateKey: &bob, Content: json.RawMessage(`{"membership":"invite"}`)}); !errors.As(err, &na) {
			t.Fatalf("an invite from outside the room: %v", err)
		}
	})
}

// createRoom makes a room through CreateRoom with the given join rule.
func createRoom(t *testing.T, rs *Roomserver, creator, version, joinRule string) string {
	t.Helper()
	roomID, err := rs.CreateRoom(context.Background(), api.CreateRoomRequest{
		Version: gomatrixserverlib.RoomVersion(version), Creator: creator,
		InitialState: []api.StateEvent{
			{Type: spec.MRoomMember, StateKey: creator, Content: map[string]string{"membership": spec.Join}},
			{Type: spec.MRoomPowerLevels, Content: map[string]any{"users": map[string]int{creator: 100}}},
			{Type: spec.MRoomJoinRules, Content: map[string]string{"join_rule": joinRule}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return roomID
}

// reparsed parses events again from their JSON, as they arrive from
// another server.
func reparsed(t *testing.T, events []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	t.Helper()
	out := make([]gomatrixserverlib.PDU, len(events))
	for i, ev := range events {
		p, err := gomatrixserverlib.MustGetRoomVersion(ev.Version()).NewEventFromTrustedJSONWithEventID(ev.EventID(), ev.JSON(), false)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = p
	}
	return out
}
