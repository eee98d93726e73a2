package testroom

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
)

// State is a room state: one event for each (type, state_key).
type State map[gomatrixserverlib.StateKeyTuple]gomatrixserverlib.PDU

// StateFromEvents makes a State from state events; it fails if two events
// share a (type, state_key) or one is not a state event.
func StateFromEvents(events []gomatrixserverlib.PDU) (State, error) {
	s := make(State, len(events))
	for _, ev := range events {
		if ev.StateKey() == nil {
			return nil, fmt.Errorf("event %s (%s) is not a state event", ev.EventID(), ev.Type())
		}
		k := gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}
		if old, ok := s[k]; ok && old.EventID() != ev.EventID() {
			return nil, fmt.Errorf("two events for (%s, %q): %s and %s", k.EventType, k.StateKey, old.EventID(), ev.EventID())
		}
		s[k] = ev
	}
	return s, nil
}

// Get returns the event for (eventType, stateKey), or nil.
func (s State) Get(eventType, stateKey string) gomatrixserverlib.PDU {
	return s[gomatrixserverlib.StateKeyTuple{EventType: eventType, StateKey: stateKey}]
}

// Events returns the events sorted by type, then state key.
func (s State) Events() []gomatrixserverlib.PDU {
	keys := make([]gomatrixserverlib.StateKeyTuple, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b gomatrixserverlib.StateKeyTuple) int {
		return cmp.Or(cmp.Compare(a.EventType, b.EventType), cmp.Compare(a.StateKey, b.StateKey))
	})
	events := make([]gomatrixserverlib.PDU, len(keys))
	for i, k := range keys {
		events[i] = s[k]
	}
	return events
}

// Clone returns a copy that can be changed without changing s.
func (s State) Clone() State {
	c := make(State, len(s))
	for k, v := range s {
		c[k] = v
	}
	return c
}

// apply returns the state after a state event; s is not changed.
func (s State) apply(ev gomatrixserverlib.PDU) State {
	c := s.Clone()
	if ev.StateKey() != nil {
		c[gomatrixserverlib.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	return c
}
