package roomserver

import (
	"context"
	"database/sql"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
)

// RoomVersion returns the room's version.
func (r *Roomserver) RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	rm, err := r.loadRoom(ctx, r.db.Reader(), roomID)
	if err != nil {
		return "", err
	}
	return rm.version, nil
}

// CurrentState returns every current state event of the room.
func (r *Roomserver) CurrentState(ctx context.Context, roomID string) ([]gomatrixserverlib.PDU, error) {
	rm, err := r.loadRoom(ctx, r.db.Reader(), roomID)
	if err != nil {
		return nil, err
	}
	return r.StateAt(ctx, int64(rm.snapshot))
}

// CurrentStateEvent returns one current state event, or nil.
func (r *Roomserver) CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	evs, err := r.stateEventsFor(ctx, q, rm.snapshot, []gomatrixserverlib.StateKeyTuple{{EventType: eventType, StateKey: stateKey}})
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	return evs[0], nil
}

// StateAt returns the events of a state snapshot, only of the given types
// when types is non-empty.
func (r *Roomserver) StateAt(ctx context.Context, snapshot int64, types ...string) ([]gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	var entries []state.Entry
	if len(types) == 0 {
		all, err := r.state.Entries(ctx, q, state.SnapshotNID(snapshot))
		if err != nil {
			return nil, err
		}
		entries = all
	}
	for _, t := range types {
		typeNID, ok, err := r.state.LookupTypeNID(ctx, q, t)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		some, err := r.state.EntriesOfType(ctx, q, state.SnapshotNID(snapshot), typeNID)
		if err != nil {
			return nil, err
		}
		entries = append(entries, some...)
	}
	return r.eventsByNID(ctx, q, entryNIDs(entries))
}

// Event returns a stored event that is part of a room (not rejected or
// soft-failed).
func (r *Roomserver) Event(ctx context.Context, eventID string) (*api.Event, error) {
	ev, err := r.eventByID(ctx, r.db.Reader(), eventID)
	if err != nil {
		return nil, err
	}
	if ev.status == statusRejected || ev.status == statusSoftFailed {
		return nil, api.ErrEventNotFound
	}
	return &api.Event{PDU: ev.pdu, Position: ev.position, StateBefore: int64(ev.before)}, nil
}

// Memberships returns every current membership of a user.
func (r *Roomserver) Memberships(ctx context.Context, userID string) ([]api.Membership, error) {
	rows, err := r.db.Reader().QueryContext(ctx, sqlSelectUserMemberships, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.Membership
	for rows.Next() {
		m := api.Membership{UserID: userID}
		if err := rows.Scan(&m.RoomID, &m.Membership, &m.EventID); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Membership returns a user's current membership of a room.
func (r *Roomserver) Membership(ctx context.Context, roomID, userID string) (api.Membership, error) {
	q := r.db.Reader()
	m := api.Membership{RoomID: roomID, UserID: userID, Membership: "leave"}
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return m, err
	}
	err = q.QueryRowContext(ctx, sqlSelectMembership, rm.nid, userID).Scan(&m.Membership, &m.EventID)
	if errors.Is(err, sql.ErrNoRows) {
		return m, nil
	}
	return m, err
}
