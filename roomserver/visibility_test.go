package roomserver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func TestMayRead(t *testing.T) {
	// Every history visibility × the user's membership at the event ×
	// whether the user joined later, against the spec's five rules.
	visibilities := []string{"world_readable", "shared", "invited", "joined", "", "unknown_value"}
	memberships := []string{"join", "invite", "leave", "ban", "knock", ""}
	for _, vis := range visibilities {
		for _, m := range memberships {
			for _, later := range []bool{false, true} {
				var want bool
				switch {
				case vis == "world_readable": // rule 1
					want = true
				case m == "join": // rule 2
					want = true
				case vis == "invited" && m == "invite": // rule 4
					want = true
				case vis == "joined" || vis == "invited":
					want = false
				default: // shared, unset or not understood: rule 3
					want = later
				}
				if got := mayRead(vis, m, later); got != want {
					t.Errorf("mayRead(%q, %q, joinedLater=%v) = %v, want %v", vis, m, later, got, want)
				}
			}
		}
	}
}

func TestEventVisibilityBeforeOrAfter(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    eventVisibility
		want bool
	}{
		{"plain event in a joined room, not a member", eventVisibility{visibility: "joined", membership: "leave"}, false},
		{"visibility becomes world_readable", eventVisibility{visibility: "joined", visibilityAfter: "world_readable"}, true},
		{"visibility stops being world_readable", eventVisibility{visibility: "world_readable", visibilityAfter: "joined"}, true},
		{"visibility joined to shared, never joined", eventVisibility{visibility: "joined", visibilityAfter: "shared"}, false},
		{"own join in a joined room", eventVisibility{visibility: "joined", membership: "invite", membershipAfter: "join"}, true},
		{"own leave in a joined room", eventVisibility{visibility: "joined", membership: "join", membershipAfter: "leave"}, true},
		{"own invite in a joined room", eventVisibility{visibility: "joined", membershipAfter: "invite"}, false},
		{"own invite in an invited room", eventVisibility{visibility: "invited", membershipAfter: "invite"}, true},
	} {
		if got := tc.v.allowed(); got != tc.want {
			t.Errorf("%s: allowed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func visSetHistory(t *testing.T, rs *Roomserver, roomID, vis string) gomatrixserverlib.PDU {
	t.Helper()
	empty := ""
	ev, err := send(t, rs, roomID, alice, "m.room.history_visibility", &empty, map[string]string{"history_visibility": vis})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func visMessage(t *testing.T, rs *Roomserver, roomID, sender, body string) gomatrixserverlib.PDU {
	t.Helper()
	ev, err := send(t, rs, roomID, sender, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": body})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func visibleIDs(t *testing.T, rs *Roomserver, user string, events ...gomatrixserverlib.PDU) map[string]bool {
	t.Helper()
	got, err := rs.VisibleEvents(context.Background(), user, events)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, ev := range got {
		ids[ev.EventID()] = true
	}
	return ids
}

func TestVisibleEventsFollowsMembershipHistory(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		rs := newRoomserver(t, db)
		ctx := context.Background()
		roomID, err := rs.CreateRoom(ctx, publicRoom("10", alice))
		if err != nil {
			t.Fatal(err)
		}
		shared := visMessage(t, rs, roomID, alice, "shared, before bob")
		visSetHistory(t, rs, roomID, "joined")
		beforeJoin := visMessage(t, rs, roomID, alice, "joined-only, before bob")
		if err := member(t, rs, roomID, bob, bob, "join"); err != nil {
			t.Fatal(err)
		}
		bobJoin, _ := rs.CurrentStateEvent(ctx, roomID, "m.room.member", bob)
		during := visMessage(t, rs, roomID, alice, "while bob is here")
		if err := member(t, rs, roomID, bob, bob, "leave"); err != nil {
			t.Fatal(err)
		}
		bobLeave, _ := rs.CurrentStateEvent(ctx, roomID, "m.room.member", bob)
		after := visMessage(t, rs, roomID, alice, "after bob left")

		got := visibleIDs(t, rs, bob, shared, beforeJoin, bobJoin, during, bobLeave, after)
		for ev, want := range map[gomatrixserverlib.PDU]bool{
			shared: true, beforeJoin: false, bobJoin: true, during: true, bobLeave: true, after: false,
		} {
			if got[ev.EventID()] != want {
				t.Errorf("bob sees %s: %v, want %v", visDescribe(ev), got[ev.EventID()], want)
			}
		}
		// A stranger sees only what was shared with everyone who joins
		// later, and nothing here since nobody joins later.
		if got := visibleIDs(t, rs, "@carol:test.local", shared, during); len(got) != 0 {
			t.Errorf("carol sees %v", got)
		}
		// Alice, joined throughout, sees it all.
		if got := visibleIDs(t, rs, alice, shared, beforeJoin, during, after); len(got) != 4 {
			t.Errorf("alice sees %d of 4", len(got))
		}

		// Bob left: he reads the state as it was when he left.
		name := ""
		if _, err := send(t, rs, roomID, alice, "m.room.name", &name, map[string]string{"name": "after bob"}); err != nil {
			t.Fatal(err)
		}
		st, err := rs.ReadableState(ctx, roomID, bob)
		if err != nil || st.Current {
			t.Fatalf("bob's readable state: %+v, %v", st, err)
		}
		if ev, _ := rs.StateEventAt(ctx, st.Snapshot, "m.room.name", ""); ev != nil {
			t.Fatalf("bob sees the name set after he left")
		}
		if ev, _ := rs.StateEventAt(ctx, st.Snapshot, "m.room.member", bob); ev == nil || ev.EventID() != bobLeave.EventID() {
			t.Fatalf("bob's state lacks his leave")
		}
		var na *api.NotAllowedError
		if _, err := rs.ReadableState(ctx, roomID, "@carol:test.local"); !errors.As(err, &na) {
			t.Fatalf("carol's readable state: %v", err)
		}
		if st, err := rs.ReadableState(ctx, roomID, alice); err != nil || !st.Current {
			t.Fatalf("alice's readable state: %+v, %v", st, err)
		}
		// Once bob forgets the room, his past in it is gone.
		if ok, err := rs.ForgetRoom(ctx, roomID, bob); err != nil || !ok {
			t.Fatalf("forget: %v, %v", ok, err)
		}
		if got := visibleIDs(t, rs, bob, shared, bobJoin, during, bobLeave); len(got) != 0 {
			t.Errorf("bob sees %v of a room he forgot", got)
		}
		if _, err := rs.ReadableState(ctx, roomID, bob); !errors.As(err, &na) {
			t.Fatalf("bob's readable state of a forgotten room: %v", err)
		}
		public := visSetHistory(t, rs, roomID, "world_readable")
		if got := visibleIDs(t, rs, bob, public); !got[public.EventID()] {
			t.Errorf("bob does not see a world_readable event")
		}
		if st, err := rs.ReadableState(ctx, roomID, "@carol:test.local"); err != nil || !st.Current {
			t.Fatalf("carol in a world_readable room: %+v, %v", st, err)
		}
		if _, err := rs.ReadableState(ctx, "!nope:test.local", alice); !errors.Is(err, api.ErrRoomNotFound) {
			t.Fatalf("unknown room: %v", err)
		}
	})
}

func visDescribe(ev gomatrixserverlib.PDU) string {
	return ev.Type() + " " + string(ev.Content())
}

func TestEventAtTimestamp(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		rs := newRoomserver(t, db)
		ctx := context.Background()
		roomID, err := rs.CreateRoom(ctx, publicRoom("11", alice))
		if err != nil {
			t.Fatal(err)
		}
		visSetHistory(t, rs, roomID, "joined")
		first := visMessage(t, rs, roomID, alice, "first")
		time.Sleep(5 * time.Millisecond)
		mid := time.Now().UnixMilli()
		time.Sleep(5 * time.Millisecond)
		second := visMessage(t, rs, roomID, alice, "second")

		check := func(user string, ts int64, forward bool, want gomatrixserverlib.PDU) {
			t.Helper()
			got, err := rs.EventAtTimestamp(ctx, roomID, user, ts, forward)
			if want == nil {
				if !errors.Is(err, api.ErrEventNotFound) {
					t.Fatalf("ts %d forward %v: got %v, %v; want not found", ts, forward, got, err)
				}
				return
			}
			if err != nil || got.EventID() != want.EventID() {
				t.Fatalf("ts %d forward %v: got %v, %v; want %s", ts, forward, got, err, want.EventID())
			}
		}
		check(alice, mid, true, second)
		check(alice, mid, false, first)
		check(alice, int64(first.OriginServerTS()), true, first) // at ts counts
		check(alice, int64(second.OriginServerTS())+1, true, nil)
		// Bob, never in the room, sees none of it.
		check(bob, mid, true, nil)
		check(bob, mid, false, nil)
		if _, err := rs.EventAtTimestamp(ctx, "!nope:test.local", alice, mid, true); !errors.Is(err, api.ErrRoomNotFound) {
			t.Fatalf("unknown room: %v", err)
		}
	})
}
