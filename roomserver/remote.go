package roomserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
)

// InputRemoteEvent stores an event from another server at the state after
// its prev events.
func (r *Roomserver) InputRemoteEvent(ctx context.Context, pdu gomatrixserverlib.PDU) (api.InputResult, error) {
	return r.inputRemote(ctx, pdu, nil)
}

// InputEventWithState stores an event from another server at a state it
// told us of.
func (r *Roomserver) InputEventWithState(ctx context.Context, pdu gomatrixserverlib.PDU, stateEvents []gomatrixserverlib.PDU) (api.InputResult, error) {
	return r.inputRemote(ctx, pdu, stateEvents)
}

// InputRejectedEvent stores an event from another server that failed the
// auth rules at its auth events, as rejected: it is never served nor part
// of a state, but later events may cite it as a prev event. It is placed
// after its prev events when their state is known, else stored without
// state.
func (r *Roomserver) InputRejectedEvent(ctx context.Context, pdu gomatrixserverlib.PDU, reason string) error {
	roomID := pdu.RoomID().String()
	unlock := r.lockRoom(roomID)
	defer unlock()
	return r.inTx(ctx, func(t *txn) error {
		rm, err := r.loadOrCreateRoom(ctx, t, pdu)
		if err != nil {
			return err
		}
		existing, err := r.eventByID(ctx, t, pdu.EventID())
		switch {
		case err == nil && existing.status == statusOutlier:
			// Known as state or auth of others: it stays where it is cited.
			_, err := t.ExecContext(ctx, `UPDATE roomserver_events SET status = $2 WHERE event_nid = $1`, existing.nid, statusRejected)
			return err
		case err == nil:
			return nil
		case !errors.Is(err, api.ErrEventNotFound):
			return err
		}
		_, err = r.inputEvent(ctx, t, rm, pdu, inputOpts{reject: notAllowedf("%s", reason)})
		var missing *api.MissingPrevEventsError
		if errors.As(err, &missing) {
			return r.insertWithoutState(ctx, t, rm, pdu, statusRejected)
		}
		return err
	})
}

func (r *Roomserver) inputRemote(ctx context.Context, pdu gomatrixserverlib.PDU, stateEvents []gomatrixserverlib.PDU) (api.InputResult, error) {
	roomID := pdu.RoomID().String()
	unlock := r.lockRoom(roomID)
	defer unlock()
	var result api.InputResult
	err := r.inTx(ctx, func(t *txn) error {
		rm, err := r.loadOrCreateRoom(ctx, t, pdu)
		if err != nil {
			return err
		}
		opts := inputOpts{}
		if stateEvents != nil {
			snap, err := r.snapshotOf(ctx, t, rm, stateEvents)
			if err != nil {
				return err
			}
			opts.stateBefore = &snap
		}
		res, err := r.inputEvent(ctx, t, rm, pdu, opts)
		if err != nil {
			return err
		}
		switch res.status {
		case statusRejected:
			result = api.InputResult{Status: api.InputRejected, Reason: reason(res.rejectErr)}
		case statusSoftFailed:
			result = api.InputResult{Status: api.InputSoftFailed, Reason: reason(res.rejectErr)}
		}
		return nil
	})
	return result, err
}

func reason(err error) string {
	if err == nil {
		return ""
	}
	var na *api.NotAllowedError
	if errors.As(err, &na) {
		return na.Reason
	}
	return err.Error()
}

// loadOrCreateRoom finds the event's room, creating its row when this
// server first hears of it (joining a room on another server).
func (r *Roomserver) loadOrCreateRoom(ctx context.Context, t *txn, pdu gomatrixserverlib.PDU) (*room, error) {
	roomID := pdu.RoomID().String()
	rm, err := r.loadRoom(ctx, t, roomID)
	if !errors.Is(err, api.ErrRoomNotFound) {
		return rm, err
	}
	var nid int64
	if err := t.QueryRowContext(ctx, sqlInsertRoom, roomID, string(pdu.Version()), 0).Scan(&nid); err != nil {
		return nil, err
	}
	return r.loadRoom(ctx, t, roomID)
}

// snapshotOf makes a snapshot of stored state events.
func (r *Roomserver) snapshotOf(ctx context.Context, t *txn, rm *room, events []gomatrixserverlib.PDU) (state.SnapshotNID, error) {
	entries := make([]state.Entry, 0, len(events))
	seen := map[state.Key]bool{}
	for _, ev := range events {
		if ev.StateKey() == nil {
			return 0, api.BadEventf("state holds %s, which is not a state event", ev.EventID())
		}
		stored, err := r.eventByID(ctx, t, ev.EventID())
		if err != nil {
			return 0, fmt.Errorf("state event %s: %w", ev.EventID(), err)
		}
		if stored.status == statusRejected {
			continue // a rejected event is never part of a state
		}
		typeNID, err := r.state.TypeNID(ctx, t.Tx, ev.Type())
		if err != nil {
			return 0, err
		}
		keyNID, err := r.state.StateKeyNID(ctx, t.Tx, *ev.StateKey())
		if err != nil {
			return 0, err
		}
		k := state.Key{TypeNID: typeNID, StateKeyNID: keyNID}
		if seen[k] {
			return 0, api.BadEventf("state holds two events for (%s, %s)", ev.Type(), *ev.StateKey())
		}
		seen[k] = true
		entries = append(entries, state.Entry{Key: k, EventNID: stored.nid})
	}
	return r.state.NewSnapshot(ctx, t.Tx, rm.nid, entries)
}

// InputOutliers stores events without state, each checked against the
// auth events it names (which must be stored or in the same batch). An
// event that fails is stored as rejected, so that anything citing it
// fails too.
func (r *Roomserver) InputOutliers(ctx context.Context, pdus []gomatrixserverlib.PDU) error {
	if len(pdus) == 0 {
		return nil
	}
	roomID := pdus[0].RoomID().String()
	for _, p := range pdus {
		if p.RoomID().String() != roomID {
			return api.BadEventf("outliers of several rooms in one batch")
		}
	}
	unlock := r.lockRoom(roomID)
	defer unlock()
	return r.inTx(ctx, func(t *txn) error {
		rm, err := r.loadOrCreateRoom(ctx, t, pdus[0])
		if err != nil {
			return err
		}
		pending := map[string]gomatrixserverlib.PDU{}
		for _, p := range pdus {
			pending[p.EventID()] = p
		}
		// Store in auth order: an event once all its auth events are known.
		for len(pending) > 0 {
			progress := false
			for id, p := range pending {
				ready := true
				for _, a := range p.AuthEventIDs() {
					if _, waiting := pending[a]; waiting {
						ready = false
						break
					}
				}
				if !ready {
					continue
				}
				if err := r.storeOutlier(ctx, t, rm, p); err != nil {
					return err
				}
				delete(pending, id)
				progress = true
			}
			if !progress {
				return api.BadEventf("the auth events of these events form a cycle")
			}
		}
		return nil
	})
}

func (r *Roomserver) storeOutlier(ctx context.Context, t *txn, rm *room, pdu gomatrixserverlib.PDU) error {
	if _, err := r.eventByID(ctx, t, pdu.EventID()); err == nil {
		return nil // known already, outlier or better
	} else if !errors.Is(err, api.ErrEventNotFound) {
		return err
	}
	status := statusOutlier
	var authEvents []gomatrixserverlib.PDU
	for _, id := range pdu.AuthEventIDs() {
		a, err := r.eventByID(ctx, t, id)
		if errors.Is(err, api.ErrEventNotFound) {
			return api.BadEventf("auth event %s of %s is unknown", id, pdu.EventID())
		}
		if err != nil {
			return err
		}
		if a.status == statusRejected {
			status = statusRejected
		}
		authEvents = append(authEvents, a.pdu)
	}
	if status != statusRejected {
		provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
		if err != nil || gomatrixserverlib.Allowed(pdu, provider, userIDForSender) != nil {
			status = statusRejected
		}
	}
	return r.insertWithoutState(ctx, t, rm, pdu, status)
}

// insertWithoutState stores an event with no state before or after it.
func (r *Roomserver) insertWithoutState(ctx context.Context, t *txn, rm *room, pdu gomatrixserverlib.PDU, status int) error {
	typeNID, err := r.state.TypeNID(ctx, t.Tx, pdu.Type())
	if err != nil {
		return err
	}
	var keyNID sql.NullInt64
	if sk := pdu.StateKey(); sk != nil {
		n, err := r.state.StateKeyNID(ctx, t.Tx, *sk)
		if err != nil {
			return err
		}
		keyNID = sql.NullInt64{Int64: n, Valid: true}
	}
	var nid int64
	return t.QueryRowContext(ctx, sqlInsertEvent, rm.nid, pdu.EventID(), typeNID, keyNID, pdu.Depth(),
		string(pdu.SenderID()), int64(pdu.OriginServerTS()), status, 0, 0, nil, string(pdu.JSON())).Scan(&nid)
}
