// Package stateres resolves the states of a room after several prev events
// into the state before an event that follows them all, with the algorithm
// of the room's version: state resolution v1 (room version 1), v2 (2–11) and
// v2.1 (12).
//
// v1 goes through gomatrixserverlib. v2 and v2.1 are implemented here, in
// v2.go, from the specification, because gomatrixserverlib (at the pinned
// version) gets them wrong: its v2 leaves the auth difference out of the
// power events' batch, so a user who joined and was kicked on one branch is
// back in the room after resolution, and its v2.1 panics whenever a power
// event is conflicted. The tests run gomatrixserverlib's v2 beside ours on
// every scenario and list where it differs (testdata/README.md).
package stateres

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// UserIDForSender maps a sender to its user ID in rooms without pseudo IDs,
// where the two are the same. It is the spec.UserIDForSender that
// gomatrixserverlib's auth checks need.
func UserIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// authChainFunc returns the full auth chain of the given events: their auth
// events, the auth events of those, and so on (in room version 12 the
// create event belongs to every other event's auth chain though no
// auth_events list names it).
type authChainFunc func(ctx context.Context, eventIDs []string) ([]gomatrixserverlib.PDU, error)

// Resolve resolves stateSets, each the full state after one prev event,
// into one state, with the algorithm of the room version.
//
// If the sets do not conflict (by the version's definition of a conflict)
// the result is their union and neither authChain nor gomatrixserverlib is
// called. Otherwise authChain is asked once for the auth chains of every
// event in every set (state resolution v2 needs each set's full auth chain
// to find the auth difference); it must return the whole chains: the
// events' auth events, theirs, and so on, which in room version 12 includes
// the create event that no auth_events list names. isRejected (nil: none)
// tells which events were rejected; a rejected auth event is never used in
// an auth check.
//
// The result is sorted by event type, then state key.
func Resolve(
	ctx context.Context,
	version gomatrixserverlib.RoomVersion,
	stateSets [][]gomatrixserverlib.PDU,
	authChain func(ctx context.Context, eventIDs []string) ([]gomatrixserverlib.PDU, error),
	isRejected func(eventID string) bool,
) (resolved []gomatrixserverlib.PDU, err error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, err
	}
	algo := verImpl.StateResAlgorithm()
	if err := checkStateSets(stateSets); err != nil {
		return nil, err
	}
	// gomatrixserverlib counts occurrences to find unconflicted events, so
	// an event listed twice in one set must be listed once.
	stateSets = slices.Clone(stateSets)
	for i, set := range stateSets {
		stateSets[i] = dedup(set)
	}
	if !conflicted(algo, stateSets) {
		return union(stateSets), nil
	}
	if isRejected == nil {
		isRejected = func(string) bool { return false }
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// gomatrixserverlib panics on some inputs it cannot handle (and so
	// might a bug here); a room with such a history must not take the
	// server down.
	defer func() {
		if p := recover(); p != nil {
			resolved, err = nil, fmt.Errorf("stateres: state resolution for room version %s panicked: %v", version, p)
		}
	}()

	switch algo {
	case gomatrixserverlib.StateResV1:
		// v1 starts from the unconflicted state, which gomatrixserverlib
		// takes as its "auth events" (it keeps the last event it is given
		// for each auth key, so auth chains must not be passed here).
		unconflicted := unconflictedV1(stateSets)
		resolved, err = gomatrixserverlib.ResolveConflictsNew(version, stateSets, unconflicted, UserIDForSender, isRejected)
	case gomatrixserverlib.StateResV2, gomatrixserverlib.StateResV2_1:
		var known []gomatrixserverlib.PDU
		if known, err = stateAndAuthChains(ctx, stateSets, authChain); err != nil {
			return nil, err
		}
		resolved, err = resolveV2(algo, verImpl, stateSets, known, isRejected)
	default:
		return nil, fmt.Errorf("stateres: room version %s has unknown state resolution algorithm %d", version, algo)
	}
	if err != nil {
		return nil, err
	}
	sortByKey(resolved)
	return resolved, nil
}

// checkStateSets makes sure each set holds state events, one per key.
func checkStateSets(stateSets [][]gomatrixserverlib.PDU) error {
	for i, set := range stateSets {
		seen := make(map[gomatrixserverlib.StateKeyTuple]string, len(set))
		for _, ev := range set {
			if ev.StateKey() == nil {
				return fmt.Errorf("stateres: state set %d holds %s, which is not a state event", i, ev.EventID())
			}
			k := keyOf(ev)
			if other, ok := seen[k]; ok && other != ev.EventID() {
				return fmt.Errorf("stateres: state set %d holds two events for (%s, %q): %s and %s", i, k.EventType, k.StateKey, other, ev.EventID())
			}
			seen[k] = ev.EventID()
		}
	}
	return nil
}

// conflicted reports whether the sets conflict. In v1 a conflict is two
// different events for one key; from v2 on it is also a key that some set
// lacks.
func conflicted(algo gomatrixserverlib.StateResAlgorithm, stateSets [][]gomatrixserverlib.PDU) bool {
	if len(stateSets) < 2 {
		return false
	}
	values := map[gomatrixserverlib.StateKeyTuple]string{}
	counts := map[gomatrixserverlib.StateKeyTuple]int{}
	for _, set := range stateSets {
		for _, ev := range dedup(set) {
			k := keyOf(ev)
			if id, ok := values[k]; ok && id != ev.EventID() {
				return true
			}
			values[k] = ev.EventID()
			counts[k]++
		}
	}
	if algo == gomatrixserverlib.StateResV1 {
		return false
	}
	for _, n := range counts {
		if n != len(stateSets) {
			return true
		}
	}
	return false
}

// unconflictedV1 returns the events whose key has one value in every set
// that has the key.
func unconflictedV1(stateSets [][]gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	byKey := map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU{}
	clash := map[gomatrixserverlib.StateKeyTuple]bool{}
	for _, set := range stateSets {
		for _, ev := range set {
			k := keyOf(ev)
			if old, ok := byKey[k]; ok && old.EventID() != ev.EventID() {
				clash[k] = true
			}
			byKey[k] = ev
		}
	}
	var out []gomatrixserverlib.PDU
	for k, ev := range byKey {
		if !clash[k] {
			out = append(out, ev)
		}
	}
	sortByKey(out)
	return out
}

// union returns the events of all sets, once each, sorted by key.
func union(stateSets [][]gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	var all []gomatrixserverlib.PDU
	for _, set := range stateSets {
		all = append(all, set...)
	}
	all = dedup(all)
	sortByKey(all)
	return all
}

// stateAndAuthChains returns every event of every state set and their full
// auth chains, once each.
func stateAndAuthChains(ctx context.Context, stateSets [][]gomatrixserverlib.PDU, authChain authChainFunc) ([]gomatrixserverlib.PDU, error) {
	if authChain == nil {
		return nil, fmt.Errorf("stateres: state sets conflict and no auth chain function was given")
	}
	var stateEvents []gomatrixserverlib.PDU
	for _, set := range stateSets {
		stateEvents = append(stateEvents, set...)
	}
	stateEvents = dedup(stateEvents)
	ids := make([]string, len(stateEvents))
	for i, ev := range stateEvents {
		ids[i] = ev.EventID()
	}
	chain, err := authChain(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("stateres: fetching auth chains: %w", err)
	}
	return dedup(append(stateEvents, chain...)), nil
}

func keyOf(ev gomatrixserverlib.PDU) gomatrixserverlib.StateKeyTuple {
	return gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}
}

// dedup drops repeated events (by event ID), keeping the first.
func dedup(events []gomatrixserverlib.PDU) []gomatrixserverlib.PDU {
	seen := make(map[string]bool, len(events))
	out := make([]gomatrixserverlib.PDU, 0, len(events))
	for _, ev := range events {
		if !seen[ev.EventID()] {
			seen[ev.EventID()] = true
			out = append(out, ev)
		}
	}
	return out
}

func sortByKey(events []gomatrixserverlib.PDU) {
	slices.SortFunc(events, func(a, b gomatrixserverlib.PDU) int {
		return cmp.Or(
			cmp.Compare(a.Type(), b.Type()),
			cmp.Compare(*a.StateKey(), *b.StateKey()),
			cmp.Compare(a.EventID(), b.EventID()),
		)
	})
}
