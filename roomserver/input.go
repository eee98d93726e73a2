package roomserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
	"github.com/plexus-chat/plexus/roomserver/stateres"
	"github.com/plexus-chat/plexus/storage"
)

// inputOpts say where an event comes from.
type inputOpts struct {
	// local events were built here at the current state: no soft-fail check.
	local bool
	// stateBefore, when set, is the state before the event as another
	// server told us (after a join, or a gap we could not fill), instead
	// of the state after its prev events.
	stateBefore *state.SnapshotNID
	// authedAt, when set, is a state the caller has already checked the
	// event against (sendLocal, at the current state): the check is not
	// repeated when it is also the state before the event.
	authedAt *state.SnapshotNID
	// reject, when set, is why the caller already refused the event (the
	// auth rules at its auth events): it is stored rejected, unchecked.
	reject error
}

// inputResult is what storing one event did.
type inputResult struct {
	nid       int64
	status    int
	rejectErr error // why the event was rejected or soft-failed
	position  int64 // stream position, 0 when not in the stream
}

// inputEvent stores one event whose prev_events are all stored, in the
// caller's transaction, with the room locked. It works out the state
// before the event (resolving forks), checks the event against the auth
// rules at that state (rejecting it) and, unless local, at the room's
// current state (soft-failing it), then moves the forward extremities and
// the current state and appends the event to the output stream.
func (r *Roomserver) inputEvent(ctx context.Context, t *txn, rm *room, pdu gomatrixserverlib.PDU, opts inputOpts) (*inputResult, error) {
	tx := t.Tx
	existing, err := r.eventByID(ctx, tx, pdu.EventID())
	switch {
	case err == nil && existing.status != statusOutlier:
		// Seen before: storing it again changes nothing.
		return &inputResult{nid: existing.nid, status: existing.status}, nil
	case err == nil:
		// An outlier (known only as state or auth) now joins the timeline:
		// its row is replaced below.
		if _, err := tx.ExecContext(ctx, `DELETE FROM roomserver_events WHERE event_nid = $1`, existing.nid); err != nil {
			return nil, err
		}
	case !errors.Is(err, api.ErrEventNotFound):
		return nil, err
	}
	var before state.SnapshotNID
	var depth int64
	if opts.stateBefore != nil {
		before, depth = *opts.stateBefore, pdu.Depth()
	} else if before, depth, err = r.stateBeforeEvent(ctx, tx, rm, pdu); err != nil {
		return nil, err
	}
	res := &inputResult{status: statusAccepted}
	if opts.reject != nil {
		res.status, res.rejectErr = statusRejected, opts.reject
	} else if opts.authedAt != nil && *opts.authedAt == before {
		// Already allowed at this state.
	} else if err := r.checkAuth(ctx, tx, pdu, before); err != nil {
		res.status, res.rejectErr = statusRejected, err
	} else if !opts.local && rm.snapshot != 0 && before != rm.snapshot {
		// (A room with no current state yet is being joined: nothing to
		// soft-fail against.)
		// Soft failure: allowed at its own state but not at the room's
		// current state, for example a message from a user banned since.
		if err := r.checkAuth(ctx, tx, pdu, rm.snapshot); err != nil {
			res.status, res.rejectErr = statusSoftFailed, err
		}
	}

	typeNID, err := r.state.TypeNID(ctx, tx, pdu.Type())
	if err != nil {
		return nil, err
	}
	var stateKeyNID sql.NullInt64
	after := before
	if sk := pdu.StateKey(); sk != nil {
		nid, err := r.state.StateKeyNID(ctx, tx, *sk)
		if err != nil {
			return nil, err
		}
		stateKeyNID = sql.NullInt64{Int64: nid, Valid: true}
	}
	var streamPos sql.NullInt64
	if res.status == statusAccepted {
		res.position = r.stream.allocate()
		t.positions = append(t.positions, res.position)
		streamPos = sql.NullInt64{Int64: res.position, Valid: true}
	}
	if err := tx.QueryRowContext(ctx, sqlInsertEvent, rm.nid, pdu.EventID(), typeNID, stateKeyNID, depth,
		string(pdu.SenderID()), int64(pdu.OriginServerTS()), res.status, int64(before), int64(before),
		streamPos, string(pdu.JSON())).Scan(&res.nid); err != nil {
		return res, fmt.Errorf("store event: %w", err)
	}
	if res.status == statusRejected {
		return res, nil
	}
	if stateKeyNID.Valid {
		after, err = r.state.Apply(ctx, tx, rm.nid, before, []state.Entry{{
			Key: state.Key{TypeNID: typeNID, StateKeyNID: stateKeyNID.Int64}, EventNID: res.nid,
		}})
		if err != nil {
			return res, err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE roomserver_events SET after_snapshot_nid = $2 WHERE event_nid = $1`, res.nid, int64(after)); err != nil {
			return res, err
		}
	}
	if res.status == statusSoftFailed {
		return res, nil
	}
	if err := r.advance(ctx, t, rm, pdu, res, after); err != nil {
		return res, err
	}
	if pdu.Type() == spec.MRoomRedaction {
		if err := r.applyRedaction(ctx, t, rm, pdu); err != nil {
			return res, err
		}
	}
	return res, nil
}

// stateBeforeEvent is the state after the event's prev events, resolved
// when they differ, and the depth the event should have had.
func (r *Roomserver) stateBeforeEvent(ctx context.Context, tx *sql.Tx, rm *room, pdu gomatrixserverlib.PDU) (state.SnapshotNID, int64, error) {
	prevIDs := pdu.PrevEventIDs()
	if len(prevIDs) == 0 {
		if pdu.Type() != spec.MRoomCreate {
			return 0, 0, api.BadEventf("only the create event may have no prev_events")
		}
		return 0, 1, nil
	}
	var snaps []state.SnapshotNID
	var depth int64
	var missing []string
	for _, id := range prevIDs {
		prev, err := r.eventByID(ctx, tx, id)
		if errors.Is(err, api.ErrEventNotFound) || (err == nil && !hasState(prev)) {
			// Unknown, or known without its state: the caller must fetch it.
			missing = append(missing, id)
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("prev event %s: %w", id, err)
		}
		// A rejected prev event is allowed (the spec: events citing
		// rejected events are accepted if they pass the auth rules); the
		// state after it is the state before it.
		depth = max(depth, prev.depth+1)
		if !slices.Contains(snaps, prev.after) {
			snaps = append(snaps, prev.after)
		}
	}
	if len(missing) > 0 {
		return 0, 0, &api.MissingPrevEventsError{EventIDs: missing}
	}
	if len(snaps) == 1 {
		return snaps[0], depth, nil
	}
	resolved, err := r.resolve(ctx, tx, rm, snaps)
	return resolved, depth, err
}

// hasState reports whether the state after a stored event is known: not
// for outliers, nor for events rejected as outliers.
func hasState(ev *storedEvent) bool {
	switch ev.status {
	case statusOutlier:
		return false
	case statusRejected:
		return ev.after != 0
	}
	return true
}

// resolve merges several states of a room into one snapshot.
func (r *Roomserver) resolve(ctx context.Context, tx *sql.Tx, rm *room, snaps []state.SnapshotNID) (state.SnapshotNID, error) {
	sets := make([][]gomatrixserverlib.PDU, len(snaps))
	for i, s := range snaps {
		entries, err := r.state.Entries(ctx, tx, s)
		if err != nil {
			return 0, err
		}
		nids := make([]int64, len(entries))
		for j, e := range entries {
			nids[j] = e.EventNID
		}
		if sets[i], err = r.eventsByNID(ctx, tx, nids); err != nil {
			return 0, err
		}
	}
	authChain := func(ctx context.Context, ids []string) ([]gomatrixserverlib.PDU, error) {
		return r.authChain(ctx, tx, ids)
	}
	resolved, err := stateres.Resolve(ctx, rm.version, sets, authChain, nil)
	if err != nil {
		return 0, err
	}
	entries := make([]state.Entry, 0, len(resolved))
	for _, ev := range resolved {
		stored, err := r.eventByID(ctx, tx, ev.EventID())
		if err != nil {
			return 0, err
		}
		typeNID, err := r.state.TypeNID(ctx, tx, ev.Type())
		if err != nil {
			return 0, err
		}
		keyNID, err := r.state.StateKeyNID(ctx, tx, *ev.StateKey())
		if err != nil {
			return 0, err
		}
		entries = append(entries, state.Entry{Key: state.Key{TypeNID: typeNID, StateKeyNID: keyNID}, EventNID: stored.nid})
	}
	return r.state.NewSnapshot(ctx, tx, rm.nid, entries)
}

// authChain returns the events' full auth chains from storage. In room
// version 12 the create event is in every chain without being listed.
func (r *Roomserver) authChain(ctx context.Context, q storage.Querier, ids []string) ([]gomatrixserverlib.PDU, error) {
	seen := map[string]bool{}
	var out []gomatrixserverlib.PDU
	queue := slices.Clone(ids)
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		ev, err := r.eventByID(ctx, q, id)
		if err != nil {
			return nil, fmt.Errorf("auth chain: %w", err)
		}
		for _, a := range ev.pdu.AuthEventIDs() {
			if !seen[a] {
				seen[a] = true
				queue = append(queue, a)
			}
		}
		if !slices.Contains(ids, id) {
			out = append(out, ev.pdu)
		}
	}
	return out, nil
}

// checkAuth checks the event against the auth rules at a state.
func (r *Roomserver) checkAuth(ctx context.Context, q storage.Querier, pdu gomatrixserverlib.PDU, at state.SnapshotNID) error {
	needed := gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{pdu})
	authEvents, err := r.stateEventsFor(ctx, q, at, needed.Tuples())
	if err != nil {
		return err
	}
	return allowed(pdu, authEvents)
}

// allowed checks an event against the auth rules with the given state
// events.
func allowed(pdu gomatrixserverlib.PDU, authEvents []gomatrixserverlib.PDU) error {
	provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
	if err != nil {
		return err
	}
	if err := gomatrixserverlib.Allowed(pdu, provider, userIDForSender); err != nil {
		return &api.NotAllowedError{Reason: err.Error()}
	}
	return nil
}

// stateEventsFor loads the events of a state for the given keys; keys not
// in the state are skipped.
func (r *Roomserver) stateEventsFor(ctx context.Context, q storage.Querier, at state.SnapshotNID, tuples []gomatrixserverlib.StateKeyTuple) ([]gomatrixserverlib.PDU, error) {
	if at == 0 || len(tuples) == 0 {
		return nil, nil
	}
	keys := make([]state.Key, 0, len(tuples))
	for _, t := range tuples {
		typeNID, ok, err := r.state.LookupTypeNID(ctx, q, t.EventType)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		keyNID, ok, err := r.state.LookupStateKeyNID(ctx, q, t.StateKey)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		keys = append(keys, state.Key{TypeNID: typeNID, StateKeyNID: keyNID})
	}
	entries, err := r.state.Lookup(ctx, q, at, keys)
	if err != nil {
		return nil, err
	}
	nids := make([]int64, len(entries))
	for i, e := range entries {
		nids[i] = e.EventNID
	}
	return r.eventsByNID(ctx, q, nids)
}

// advance makes an accepted event a forward extremity, recomputes the
// room's current state and appends the event to the output stream.
func (r *Roomserver) advance(ctx context.Context, t *txn, rm *room, pdu gomatrixserverlib.PDU, res *inputResult, after state.SnapshotNID) error {
	tx := t.Tx
	for _, prev := range pdu.PrevEventIDs() {
		prevEv, err := r.eventByID(ctx, tx, prev)
		if errors.Is(err, api.ErrEventNotFound) {
			continue // an event joined at a given state may follow events we never saw
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, sqlDeleteExtremity, rm.nid, prevEv.nid); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, sqlInsertExtremity, rm.nid, res.nid); err != nil {
		return err
	}
	extremities, err := r.extremities(ctx, tx, rm.nid)
	if err != nil {
		return err
	}
	current := after
	if len(extremities) > 1 {
		var snaps []state.SnapshotNID
		for _, x := range extremities {
			if !slices.Contains(snaps, x.after) {
				snaps = append(snaps, x.after)
			}
		}
		if len(snaps) > 1 {
			if current, err = r.resolve(ctx, tx, rm, snaps); err != nil {
				return err
			}
		} else {
			current = snaps[0]
		}
	}
	removed, added, err := r.state.Diff(ctx, tx, rm.snapshot, current)
	if err != nil {
		return err
	}
	addedIDs, err := r.applyStateChanges(ctx, tx, rm, added)
	if err != nil {
		return err
	}
	removedEvents, err := r.eventsByNID(ctx, tx, entryNIDs(removed))
	if err != nil {
		return err
	}
	removedIDs := make([]string, len(removedEvents))
	for i, ev := range removedEvents {
		removedIDs[i] = ev.EventID()
	}
	if current != rm.snapshot {
		if _, err := tx.ExecContext(ctx, sqlSetRoomState, rm.nid, int64(current)); err != nil {
			return err
		}
		rm.snapshot = current
	}
	return r.writeOutput(ctx, t, rm.nid, res.nid, api.OutputEvent{
		Position: res.position, RoomID: rm.id, Event: pdu, AddsState: addedIDs, RemovesState: removedIDs,
	})
}

// applyStateChanges keeps the membership index in step with the current
// state and returns the IDs of the events that entered it.
func (r *Roomserver) applyStateChanges(ctx context.Context, tx *sql.Tx, rm *room, added []state.Entry) ([]string, error) {
	events, err := r.eventsByNID(ctx, tx, entryNIDs(added))
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.EventID()
		if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
			continue
		}
		membership, err := ev.Membership()
		if err != nil {
			continue
		}
		if _, err := tx.ExecContext(ctx, sqlUpsertMembership, rm.nid, *ev.StateKey(), membership, added[i].EventNID,
			serverOfUser(*ev.StateKey())); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

func entryNIDs(entries []state.Entry) []int64 {
	nids := make([]int64, len(entries))
	for i, e := range entries {
		nids[i] = e.EventNID
	}
	return nids
}

type extremity struct {
	nid     int64
	eventID string
	depth   int64
	after   state.SnapshotNID
}

func (r *Roomserver) extremities(ctx context.Context, q storage.Querier, roomNID int64) ([]extremity, error) {
	rows, err := q.QueryContext(ctx, sqlSelectExtremities, roomNID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []extremity
	for rows.Next() {
		var x extremity
		var after int64
		if err := rows.Scan(&x.nid, &x.eventID, &x.depth, &after); err != nil {
			return nil, err
		}
		x.after = state.SnapshotNID(after)
		out = append(out, x)
	}
	return out, rows.Err()
}
