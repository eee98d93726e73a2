package roomserver

import (
	"context"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
)

// ReadableState returns the state of a room a user may read (the spec's
// rule for GET /state and /members): the current state when the user is
// joined or the room is world_readable, otherwise the state when the user
// last left after having been joined. A user who was never joined (only
// invited, say), or who forgot the room, may read nothing.
func (r *Roomserver) ReadableState(ctx context.Context, roomID, userID string) (api.ReadableState, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return api.ReadableState{}, err
	}
	current := api.ReadableState{Snapshot: int64(rm.snapshot), Current: true}
	keyNID, known, err := r.state.LookupStateKeyNID(ctx, q, userID)
	if err != nil {
		return api.ReadableState{}, err
	}
	visibility, membership, err := r.visibilityAt(ctx, q, rm.snapshot, keyNID, known)
	if err != nil {
		return api.ReadableState{}, err
	}
	if membership == spec.Join || visibility == visWorldReadable {
		return current, nil
	}
	if !known {
		return api.ReadableState{}, notMember
	}
	// A user who forgot the room has no past in it to read (/forget).
	if forgotten, err := r.RoomForgotten(ctx, roomID, userID); err != nil || forgotten {
		if err == nil {
			err = notMember
		}
		return api.ReadableState{}, err
	}
	history, err := r.membershipHistory(ctx, q, rm.snapshot, keyNID, 0)
	if err != nil {
		return api.ReadableState{}, err
	}
	// The newest join: the event after it in the history is the one that
	// ended it.
	for i := 1; i < len(history); i++ {
		if history[i].membership == spec.Join {
			return api.ReadableState{Snapshot: int64(history[i-1].after)}, nil
		}
	}
	return api.ReadableState{}, notMember
}

var notMember = &api.NotAllowedError{Reason: "You are not a member of this room"}

// StateEventAt returns one event of a state snapshot, or nil.
func (r *Roomserver) StateEventAt(ctx context.Context, snapshot int64, eventType, stateKey string) (gomatrixserverlib.PDU, error) {
	evs, err := r.stateEventsFor(ctx, r.db.Reader(), state.SnapshotNID(snapshot),
		[]gomatrixserverlib.StateKeyTuple{{EventType: eventType, StateKey: stateKey}})
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	return evs[0], nil
}
