package stateres

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/testroom"
)

func noRejections(string) bool { return false }

func topic(text string) map[string]any { return map[string]any{"topic": text} }

func TestNoConflictNeedsNoAuthChain(t *testing.T) {
	ctx := context.Background()
	forbidden := func(context.Context, []string) ([]gomatrixserverlib.PDU, error) {
		t.Error("authChain called for sets that do not conflict")
		return nil, errors.New("no")
	}
	for _, v := range []gomatrixserverlib.RoomVersion{"1", "2", "10", "11", "12"} {
		t.Run("v"+string(v), func(t *testing.T) {
			a := testroom.NewServer(t, "a.test")
			alice, bob := a.User("alice"), a.User("bob")
			room := testroom.New(t, string(v), alice).Join(bob)
			state := room.State().Events()

			for name, sets := range map[string][][]gomatrixserverlib.PDU{
				"none":      nil,
				"one":       {state},
				"identical": {state, slices.Clone(state), state},
			} {
				got, err := Resolve(ctx, v, sets, forbidden, noRejections)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if len(sets) > 0 && !slices.Equal(eventIDs(got), eventIDs(state)) {
					t.Errorf("%s: got %d events, want the %d of the set", name, len(got), len(state))
				}
			}

			// A key only one set has: no conflict for v1, a conflict from v2 on.
			withTopic := room.Fork().SetState(alice, spec.MRoomTopic, "", topic("t")).State().Events()
			asked := false
			chain := func(ctx context.Context, ids []string) ([]gomatrixserverlib.PDU, error) {
				asked = true
				return room.AuthChain(ctx, ids)
			}
			got, err := Resolve(ctx, v, [][]gomatrixserverlib.PDU{state, withTopic}, chain, noRejections)
			if err != nil {
				t.Fatal(err)
			}
			if wantAsked := v != "1"; asked != wantAsked {
				t.Errorf("authChain asked: %v, want %v", asked, wantAsked)
			}
			if !slices.Equal(eventIDs(got), eventIDs(withTopic)) {
				t.Errorf("got %d events, want the topic set's %d", len(got), len(withTopic))
			}
		})
	}
}

// Resolve asks for the auth chains of every event of every set, not only
// the conflicted ones: the auth difference compares whole auth chains.
func TestAuthChainsOfAllStateEvents(t *testing.T) {
	for _, v := range []gomatrixserverlib.RoomVersion{"2", "11", "12"} {
		t.Run("v"+string(v), func(t *testing.T) {
			a := testroom.NewServer(t, "a.test")
			alice, bob := a.User("alice"), a.User("bob")
			base := testroom.New(t, string(v), alice).Join(bob)
			left := base.Fork().SetState(alice, spec.MRoomTopic, "", topic("l")).State().Events()
			right := base.Fork().SetState(alice, "m.room.custom", "", topic("r")).State().Events()
			var asked []string
			chain := func(ctx context.Context, ids []string) ([]gomatrixserverlib.PDU, error) {
				asked = append(asked, ids...)
				return base.AuthChain(ctx, ids)
			}
			if _, err := Resolve(context.Background(), v, [][]gomatrixserverlib.PDU{left, right}, chain, noRejections); err != nil {
				t.Fatal(err)
			}
			want := eventIDs(dedup(append(slices.Clone(left), right...)))
			slices.Sort(asked)
			slices.Sort(want)
			if !slices.Equal(asked, want) {
				t.Errorf("asked for the auth chains of\n %v\nwant\n %v", asked, want)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	ctx := context.Background()
	a := testroom.NewServer(t, "a.test")
	alice, bob := a.User("alice"), a.User("bob")
	room := testroom.New(t, "11", alice).Join(bob)
	state := room.State().Events()
	other := room.Fork().SetState(alice, spec.MRoomTopic, "", topic("x"))
	topicSet := other.State().Events()
	message := room.Fork().Send(alice, "hi").Last()
	topic2 := room.Fork().SetState(alice, spec.MRoomTopic, "", topic("y")).Last()

	for name, tc := range map[string]struct {
		version   gomatrixserverlib.RoomVersion
		sets      [][]gomatrixserverlib.PDU
		authChain func(context.Context, []string) ([]gomatrixserverlib.PDU, error)
		want      string
	}{
		"unknown version": {"99", [][]gomatrixserverlib.PDU{state}, room.AuthChain, "unsupported room version"},
		"message event":   {"11", [][]gomatrixserverlib.PDU{append(slices.Clone(state), message)}, room.AuthChain, "not a state event"},
		"duplicate key":   {"11", [][]gomatrixserverlib.PDU{append(slices.Clone(topicSet), topic2)}, room.AuthChain, "two events for"},
		"no auth chains":  {"11", [][]gomatrixserverlib.PDU{state, topicSet}, nil, "no auth chain function"},
		"auth chain error": {"12", [][]gomatrixserverlib.PDU{state, topicSet},
			func(context.Context, []string) ([]gomatrixserverlib.PDU, error) { return nil, errors.New("db down") }, "db down"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Resolve(ctx, tc.version, tc.sets, tc.authChain, noRejections)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}

	// Events from another room.
	r1 := testroom.New(t, "12", alice).Join(bob)
	r2 := testroom.New(t, "12", bob).SetState(bob, spec.MRoomTopic, "", topic("elsewhere"))
	sets := [][]gomatrixserverlib.PDU{r1.State().Events(), append(r1.State().Events(), r2.Last())}
	chain := func(ctx context.Context, ids []string) ([]gomatrixserverlib.PDU, error) {
		var out []gomatrixserverlib.PDU
		for _, id := range ids {
			for _, room := range []*testroom.Room{r1, r2} {
				if c, err := room.AuthChain(ctx, []string{id}); err == nil {
					out = append(out, c...)
				}
			}
		}
		return out, nil
	}
	if _, err := Resolve(ctx, "12", sets, chain, noRejections); err == nil || !strings.Contains(err.Error(), "is in room") {
		t.Errorf("two rooms: error %v", err)
	}
}

// The conflicted state subgraph (v2.1) holds the events on auth_events
// paths between conflicted events: here the middle of three power level
// events, when the first and the last conflict.
func TestConflictedSubgraph(t *testing.T) {
	a := testroom.NewServer(t, "a.test")
	alice, bob, carol := a.User("alice"), a.User("bob"), a.User("carol")
	room := testroom.New(t, "12", alice).Join(bob).Join(carol)
	p1 := room.SetUserLevel(alice, bob, 10).Last()
	room.SetState(alice, spec.MRoomTopic, "", topic("unrelated"))
	p2 := room.SetUserLevel(alice, bob, 20).Last()
	p3 := room.SetUserLevel(alice, bob, 30).Last()
	bobJoin := room.State().Get(spec.MRoomMember, bob.ID())

	r := &resolverV2{events: map[string]gomatrixserverlib.PDU{}}
	for _, ev := range room.Events() {
		r.events[ev.EventID()] = ev
	}
	got := r.conflictedSubgraph([]gomatrixserverlib.PDU{p1, p3, bobJoin})
	want := []string{p1.EventID(), p2.EventID()} // p3 is no auth event of a conflicted event
	var gotIDs []string
	for id := range got {
		gotIDs = append(gotIDs, id)
	}
	slices.Sort(gotIDs)
	slices.Sort(want)
	if !slices.Equal(gotIDs, want) {
		t.Errorf("subgraph %v, want %v (p1 %s, p2 %s, p3 %s)", gotIDs, want, p1.EventID(), p2.EventID(), p3.EventID())
	}
}

// An auth key missing from the partial state is taken from the event's own
// auth events, but never from a rejected one.
func TestIterativeAuthChecksSkipRejectedAuthEvents(t *testing.T) {
	a := testroom.NewServer(t, "a.test")
	alice, bob := a.User("alice"), a.User("bob")
	room := testroom.New(t, "12", alice).Join(bob).SetUserLevel(alice, bob, 50)
	bobJoin := room.State().Get(spec.MRoomMember, bob.ID())
	bobTopic := room.Event(bob, spec.MRoomTopic, testroom.StateKey(""), topic("bob's"))

	for _, rejectJoin := range []bool{false, true} {
		r := &resolverV2{events: map[string]gomatrixserverlib.PDU{}, isRejected: func(id string) bool {
			return rejectJoin && id == bobJoin.EventID()
		}}
		for _, ev := range room.Events() {
			r.events[ev.EventID()] = ev
		}
		state := stateMap{}
		r.iterativeAuthChecks(state, []gomatrixserverlib.PDU{bobTopic})
		if applied := state[keyOf(bobTopic)] != nil; applied == rejectJoin {
			t.Errorf("bob's join rejected: %v; topic applied: %v", rejectJoin, applied)
		}
	}
}

// gomatrixserverlib's own v2.1 (ResolveConflictsNew for room version 12)
// panics as soon as a power event is conflicted: it sorts power events by
// their senders' power before it has a create event to find the creators
// in (stateresolutionv2.go, getPowerLevelFromAuthEvents). That is why v2.go
// exists. If this test fails, gomatrixserverlib has changed: compare it
// with resolveV2 and consider using it for v12 again.
func TestGomatrixserverlibV21StillPanics(t *testing.T) {
	a := testroom.NewServer(t, "a.test")
	alice, bob := a.User("alice"), a.User("bob")
	base := testroom.New(t, "12", alice).Join(bob)
	sets := [][]gomatrixserverlib.PDU{
		base.Fork().SetUserLevel(alice, bob, 50).State().Events(),
		base.Fork().SetState(alice, spec.MRoomTopic, "", topic("t")).State().Events(),
	}
	known, err := stateAndAuthChains(context.Background(), sets, base.AuthChain)
	if err != nil {
		t.Fatal(err)
	}
	panicked := func() (p any) {
		defer func() { p = recover() }()
		_, _ = gomatrixserverlib.ResolveConflictsNew("12", sets, known, UserIDForSender, noRejections)
		return nil
	}()
	if panicked == nil {
		t.Error("gomatrixserverlib's state resolution v2.1 no longer panics here; see this test's comment")
	}
	// Resolve itself copes.
	got, err := Resolve(context.Background(), "12", sets, base.AuthChain, noRejections)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := testroom.StateFromEvents(got)
	promoted, _ := testroom.StateFromEvents(sets[0])
	if s.Get(spec.MRoomTopic, "") == nil || s.Get(spec.MRoomPowerLevels, "") != promoted.Get(spec.MRoomPowerLevels, "") {
		t.Error("Resolve lost one branch's change")
	}
}
