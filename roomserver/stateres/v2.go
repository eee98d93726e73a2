package stateres

import (
	"cmp"
	"container/heap"
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// This file is state resolution v2 and v2.1 as the specification words them
// (rooms/v2 "State resolution", and rooms/v12, which changes three things:
// the iterative auth checks of step 2 start from an empty state map, the
// full conflicted set also holds the conflicted state subgraph, and room
// creators have unlimited power when power events are sorted). Auth checks
// and power level parsing are gomatrixserverlib's.

type stateMap map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU

type resolverV2 struct {
	algo       gomatrixserverlib.StateResAlgorithm
	verImpl    gomatrixserverlib.IRoomVersion
	events     map[string]gomatrixserverlib.PDU // the state sets and their auth chains
	isRejected func(eventID string) bool
	create     gomatrixserverlib.PDU
	creators   []string // creators with unlimited power (v12), else nil
	levels     map[string]*gomatrixserverlib.PowerLevelContent
}

// resolveV2 resolves conflicting state sets with state resolution v2 or
// v2.1 (algo). known must hold every event of the sets and of their full
// auth chains.
func resolveV2(
	algo gomatrixserverlib.StateResAlgorithm,
	verImpl gomatrixserverlib.IRoomVersion,
	stateSets [][]gomatrixserverlib.PDU,
	known []gomatrixserverlib.PDU,
	isRejected func(eventID string) bool,
) ([]gomatrixserverlib.PDU, error) {
	r := &resolverV2{
		algo:       algo,
		verImpl:    verImpl,
		events:     make(map[string]gomatrixserverlib.PDU, len(known)),
		isRejected: isRejected,
		levels:     map[string]*gomatrixserverlib.PowerLevelContent{},
	}
	for _, ev := range known {
		r.events[ev.EventID()] = ev
	}
	unconflicted, conflictedSet := splitV2(stateSets)
	if err := r.findCreate(stateSets); err != nil {
		return nil, err
	}

	// The full conflicted set: the conflicted state set, the auth
	// difference and (v2.1) the conflicted state subgraph.
	full := map[string]bool{}
	for _, ev := range conflictedSet {
		full[ev.EventID()] = true
	}
	chains := make([]map[string]bool, len(stateSets))
	for i, set := range stateSets {
		chains[i] = r.authChain(set...)
	}
	for _, chain := range chains {
		for id := range chain {
			for _, other := range chains {
				if !other[id] {
					full[id] = true
					break
				}
			}
		}
	}
	if algo == gomatrixserverlib.StateResV2_1 {
		for id := range r.conflictedSubgraph(conflictedSet) {
			full[id] = true
		}
	}

	// 1. The power events of the full conflicted set, with the events of
	// their auth chains that are in it too, in reverse topological power
	// ordering.
	power := map[string]bool{}
	var powerEvents []gomatrixserverlib.PDU
	for id := range full {
		if ev := r.events[id]; ev != nil && isPowerEvent(ev) {
			power[id] = true
			powerEvents = append(powerEvents, ev)
		}
	}
	for a := range r.authChain(powerEvents...) { // the union of their auth chains
		if full[a] {
			power[a] = true
		}
	}
	powerOrdered := r.reverseTopologicalPowerOrdering(power)

	// 2. Iterative auth checks on them, from the unconflicted state (v2) or
	// from nothing (v2.1).
	state := stateMap{}
	if algo == gomatrixserverlib.StateResV2 {
		for k, ev := range unconflicted {
			state[k] = ev
		}
	}
	r.iterativeAuthChecks(state, powerOrdered)

	// 3. The other events in mainline order of the power levels so far,
	// 4. and iterative auth checks on them.
	var others []gomatrixserverlib.PDU
	for id := range full {
		if ev := r.events[id]; ev != nil && !power[id] {
			others = append(others, ev)
		}
	}
	r.mainlineOrdering(state[plKey], others)
	r.iterativeAuthChecks(state, others)

	// 5. The unconflicted state map has the last word.
	for k, ev := range unconflicted {
		state[k] = ev
	}
	out := make([]gomatrixserverlib.PDU, 0, len(state))
	for _, ev := range state {
		out = append(out, ev)
	}
	return out, nil
}

var (
	plKey     = gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomPowerLevels, StateKey: ""}
	createKey = gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomCreate, StateKey: ""}
)

// splitV2 splits the state sets into the unconflicted state map (keys with
// the same event in every set) and the conflicted state set (every other
// event).
func splitV2(stateSets [][]gomatrixserverlib.PDU) (stateMap, []gomatrixserverlib.PDU) {
	type entry struct {
		ev   gomatrixserverlib.PDU
		sets int
	}
	byKey := map[gomatrixserverlib.StateKeyTuple][]*entry{}
	for _, set := range stateSets {
		for _, ev := range dedup(set) {
			k := keyOf(ev)
			i := slices.IndexFunc(byKey[k], func(e *entry) bool { return e.ev.EventID() == ev.EventID() })
			if i < 0 {
				byKey[k] = append(byKey[k], &entry{ev: ev})
				i = len(byKey[k]) - 1
			}
			byKey[k][i].sets++
		}
	}
	unconflicted := stateMap{}
	var conflictedSet []gomatrixserverlib.PDU
	for k, entries := range byKey {
		if len(entries) == 1 && entries[0].sets == len(stateSets) {
			unconflicted[k] = entries[0].ev
			continue
		}
		for _, e := range entries {
			conflictedSet = append(conflictedSet, e.ev)
		}
	}
	return unconflicted, conflictedSet
}

// findCreate finds the room's create event (in room versions with
// domainless room IDs, the event the room ID names) and its creators, and
// checks that every event belongs to the room.
func (r *resolverV2) findCreate(stateSets [][]gomatrixserverlib.PDU) error {
	for _, set := range stateSets {
		for _, ev := range set {
			if keyOf(ev) == createKey {
				r.create = ev
			}
		}
	}
	if r.create == nil {
		return fmt.Errorf("stateres: no create event in the state sets")
	}
	roomID := r.create.RoomID().String()
	if r.verImpl.DomainlessRoomIDs() && roomID != "!"+r.create.EventID()[1:] {
		return fmt.Errorf("stateres: create event %s does not name room %s", r.create.EventID(), roomID)
	}
	for _, ev := range r.events {
		if ev.RoomID().String() != roomID {
			return fmt.Errorf("stateres: event %s is in room %s, not %s", ev.EventID(), ev.RoomID().String(), roomID)
		}
	}
	if r.verImpl.PrivilegedCreators() {
		var content struct {
			AdditionalCreators []string `json:"additional_creators"`
		}
		// The auth rules reject create events whose additional_creators
		// is not a list of user IDs, so ignoring a parse error is safe.
		_ = json.Unmarshal(r.create.Content(), &content)
		r.creators = append([]string{string(r.create.SenderID())}, content.AdditionalCreators...)
	}
	return nil
}

// authChain returns the IDs of the auth chains of events: every event
// reached by following auth_events, not the events themselves (unless one
// is in the auth chain of another).
func (r *resolverV2) authChain(events ...gomatrixserverlib.PDU) map[string]bool {
	chain := map[string]bool{}
	stack := slices.Clone(events)
	for len(stack) > 0 {
		ev := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, id := range ev.AuthEventIDs() {
			if chain[id] {
				continue
			}
			chain[id] = true
			if a := r.events[id]; a != nil {
				stack = append(stack, a)
			}
		}
	}
	return chain
}

// conflictedSubgraph returns the events on auth_events paths from one
// conflicted event to another, endpoints included (v2.1): those in the
// auth chain of a conflicted event from which a conflicted event can be
// reached.
func (r *resolverV2) conflictedSubgraph(conflictedSet []gomatrixserverlib.PDU) map[string]bool {
	isConflicted := map[string]bool{}
	for _, ev := range conflictedSet {
		isConflicted[ev.EventID()] = true
	}
	const (
		unknown = iota
		visiting
		yes
		no
	)
	reaches := map[string]int{}
	var reachesConflicted func(id string) bool
	reachesConflicted = func(id string) bool {
		switch reaches[id] {
		case yes:
			return true
		case no, visiting: // visiting: a cycle, which hashes make impossible
			return false
		}
		if isConflicted[id] {
			reaches[id] = yes
			return true
		}
		reaches[id] = visiting
		result := no
		if ev := r.events[id]; ev != nil {
			for _, a := range ev.AuthEventIDs() {
				if reachesConflicted(a) {
					result = yes
				}
			}
		}
		reaches[id] = result
		return result == yes
	}
	sub := map[string]bool{}
	for id := range r.authChain(conflictedSet...) {
		if r.events[id] != nil && reachesConflicted(id) {
			sub[id] = true
		}
	}
	return sub
}

// isPowerEvent tells power events: power levels, join rules, and
// memberships that kick or ban someone else.
func isPowerEvent(ev gomatrixserverlib.PDU) bool {
	switch {
	case ev.StateKey() == nil:
		return false
	case ev.Type() == spec.MRoomPowerLevels || ev.Type() == spec.MRoomJoinRules:
		return *ev.StateKey() == ""
	case ev.Type() == spec.MRoomMember:
		if *ev.StateKey() == string(ev.SenderID()) {
			return false
		}
		m, err := ev.Membership()
		return err == nil && (m == spec.Leave || m == spec.Ban)
	}
	return false
}

// powerLevelsAuthEvent returns the m.room.power_levels event among ev's
// auth events, or nil.
func (r *resolverV2) powerLevelsAuthEvent(ev gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	for _, id := range ev.AuthEventIDs() {
		if a := r.events[id]; a != nil && a.StateKey() != nil && keyOf(a) == plKey {
			return a
		}
	}
	return nil
}

// senderPower is the power level of ev's sender by ev's own auth events
// (unlimited for the creators of v12 rooms).
func (r *resolverV2) senderPower(ev gomatrixserverlib.PDU) int64 {
	sender := string(ev.SenderID())
	if slices.Contains(r.creators, sender) {
		return math.MaxInt64
	}
	pl := r.powerLevelsAuthEvent(ev)
	if pl == nil {
		// Without power levels the creator has 100 (before v12; from v12
		// on the creators were handled above) and everyone else 0.
		if r.creators == nil && sender == string(r.create.SenderID()) {
			return 100
		}
		return 0
	}
	content, ok := r.levels[pl.EventID()]
	if !ok {
		if c, err := gomatrixserverlib.NewPowerLevelContentFromEvent(pl); err == nil {
			content = &c
		}
		r.levels[pl.EventID()] = content
	}
	if content == nil {
		return 0
	}
	return content.UserLevel(ev.SenderID())
}

// reverseTopologicalPowerOrdering sorts the events with Kahn's algorithm
// over their auth_events, earliest first, taking at each step the smallest
// ready event: greatest sender power, then smallest origin_server_ts, then
// smallest event ID.
func (r *resolverV2) reverseTopologicalPowerOrdering(ids map[string]bool) []gomatrixserverlib.PDU {
	power := map[string]int64{}
	inDegree := map[string]int{}
	children := map[string][]string{}
	for id := range ids {
		ev := r.events[id]
		if ev == nil {
			continue
		}
		power[id] = r.senderPower(ev)
		inDegree[id] += 0
		for _, a := range uniq(ev.AuthEventIDs()) {
			if ids[a] && r.events[a] != nil {
				inDegree[id]++
				children[a] = append(children[a], id)
			}
		}
	}
	ready := &eventHeap{less: func(a, b gomatrixserverlib.PDU) bool {
		if pa, pb := power[a.EventID()], power[b.EventID()]; pa != pb {
			return pa > pb
		}
		if ta, tb := a.OriginServerTS(), b.OriginServerTS(); ta != tb {
			return ta < tb
		}
		return a.EventID() < b.EventID()
	}}
	for id, n := range inDegree {
		if n == 0 {
			ready.events = append(ready.events, r.events[id])
		}
	}
	heap.Init(ready)
	out := make([]gomatrixserverlib.PDU, 0, len(inDegree))
	for ready.Len() > 0 {
		ev := heap.Pop(ready).(gomatrixserverlib.PDU)
		out = append(out, ev)
		for _, c := range children[ev.EventID()] {
			if inDegree[c]--; inDegree[c] == 0 {
				heap.Push(ready, r.events[c])
			}
		}
	}
	if len(out) < len(inDegree) {
		// Only a cycle in auth_events leaves events behind; hashes make
		// one impossible, but never drop events silently.
		var rest []gomatrixserverlib.PDU
		for id, n := range inDegree {
			if n > 0 {
				rest = append(rest, r.events[id])
			}
		}
		slices.SortFunc(rest, func(a, b gomatrixserverlib.PDU) int {
			if ready.less(a, b) {
				return -1
			}
			return 1
		})
		out = append(out, rest...)
	}
	return out
}

// mainlineOrdering sorts events by their mainline position based on pl
// (earlier in the mainline first, an event that reaches no mainline event
// before all), then origin_server_ts, then event ID.
func (r *resolverV2) mainlineOrdering(pl gomatrixserverlib.PDU, events []gomatrixserverlib.PDU) {
	mainline := map[string]int{}
	for p, i := pl, 0; p != nil; p, i = r.powerLevelsAuthEvent(p), i+1 {
		if _, loop := mainline[p.EventID()]; loop {
			break
		}
		mainline[p.EventID()] = i
	}
	position := make(map[string]int, len(events))
	for _, ev := range events {
		pos, steps := math.MaxInt, 0
		for p := r.powerLevelsAuthEvent(ev); p != nil && steps <= len(r.events); p, steps = r.powerLevelsAuthEvent(p), steps+1 {
			if i, ok := mainline[p.EventID()]; ok {
				pos = i
				break
			}
		}
		position[ev.EventID()] = pos
	}
	slices.SortStableFunc(events, func(a, b gomatrixserverlib.PDU) int {
		return cmp.Or(
			-cmp.Compare(position[a.EventID()], position[b.EventID()]),
			cmp.Compare(a.OriginServerTS(), b.OriginServerTS()),
			cmp.Compare(a.EventID(), b.EventID()),
		)
	})
}

// iterativeAuthChecks applies each state event that the auth rules allow at
// state to state. An auth key that state lacks is taken from the event's
// own auth events, unless that auth event was rejected.
func (r *resolverV2) iterativeAuthChecks(state stateMap, events []gomatrixserverlib.PDU) {
	for _, ev := range events {
		if ev.StateKey() == nil {
			continue
		}
		var authEvents []gomatrixserverlib.PDU
		for _, k := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev}).Tuples() {
			if s, ok := state[k]; ok {
				authEvents = append(authEvents, s)
				continue
			}
			for _, id := range ev.AuthEventIDs() {
				a := r.events[id]
				if a != nil && a.StateKey() != nil && keyOf(a) == k && !r.isRejected(id) {
					authEvents = append(authEvents, a)
					break
				}
			}
		}
		provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
		if err != nil {
			continue
		}
		if gomatrixserverlib.Allowed(ev, provider, UserIDForSender) == nil {
			state[keyOf(ev)] = ev
		}
	}
}

func uniq(ids []string) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// eventHeap is a container/heap of events ordered by less.
type eventHeap struct {
	events []gomatrixserverlib.PDU
	less   func(a, b gomatrixserverlib.PDU) bool
}

func (h *eventHeap) Len() int           { return len(h.events) }
func (h *eventHeap) Less(i, j int) bool { return h.less(h.events[i], h.events[j]) }
func (h *eventHeap) Swap(i, j int)      { h.events[i], h.events[j] = h.events[j], h.events[i] }
func (h *eventHeap) Push(x any)         { h.events = append(h.events, x.(gomatrixserverlib.PDU)) }
func (h *eventHeap) Pop() any {
	ev := h.events[len(h.events)-1]
	h.events = h.events[:len(h.events)-1]
	return ev
}
