package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
	"github.com/plexus-chat/plexus/storage"
)

// Membership handshakes with other servers (the federation API's
// make_join/send_join, make_leave/send_leave, make_knock/send_knock and
// invites, in both directions):
//
//   - templates of remote users' membership events at our current state;
//   - local events built and checked but not stored (an invite of a remote
//     user, which its server signs before we store it);
//   - the join of a local user through another server, at the state that
//     server gave;
//   - "out-of-band" membership events: a local user's invite to, knock on
//     or leave of a room this server is not in. They have no state here,
//     so they are stored without one (as outliers), become the user's
//     membership and enter the output stream as a change of that one
//     membership, which is how the sync API learns of them.

var _ api.FederationMembership = (*Roomserver)(nil)

const (
	sqlSelectMembershipEvent = `SELECT m.membership, m.event_nid, e.event_id FROM roomserver_memberships m
		JOIN roomserver_events e ON e.event_nid = m.event_nid WHERE m.room_nid = $1 AND m.user_id = $2`
	sqlDeleteExtremities = `DELETE FROM roomserver_extremities WHERE room_nid = $1`
)

// MembershipTemplate builds a remote user's m.room.member event about
// themselves at the room's current state and checks it against the auth
// rules there; it returns the event as a make_join, make_leave or
// make_knock template: the JSON without hashes, signatures and event ID.
func (r *Roomserver) MembershipTemplate(ctx context.Context, roomID, userID string, content json.RawMessage) (json.RawMessage, gomatrixserverlib.RoomVersion, error) {
	var (
		tmpl    json.RawMessage
		version gomatrixserverlib.RoomVersion
	)
	err := r.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rm, err := r.loadRoom(ctx, tx, roomID)
		if err != nil {
			return err
		}
		version = rm.version
		pdu, err := r.buildEvent(ctx, tx, rm, api.NewEvent{
			RoomID: roomID, Sender: userID, Type: spec.MRoomMember, StateKey: &userID, Content: content,
		})
		if err != nil {
			return err
		}
		js := pdu.JSON()
		for _, k := range []string{"hashes", "signatures", "event_id", "unsigned"} {
			if js, err = sjson.DeleteBytes(js, k); err != nil {
				return err
			}
		}
		tmpl = js
		return nil
	})
	return tmpl, version, err
}

// BuildMembershipEvent builds and signs a local user's m.room.member event
// at the room's current state and checks it against the auth rules,
// without storing it.
func (r *Roomserver) BuildMembershipEvent(ctx context.Context, ev api.NewEvent) (gomatrixserverlib.PDU, error) {
	if ev.Type != spec.MRoomMember || ev.StateKey == nil {
		return nil, api.BadEventf("not a membership event")
	}
	var pdu gomatrixserverlib.PDU
	err := r.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rm, err := r.loadRoom(ctx, tx, ev.RoomID)
		if err != nil {
			return err
		}
		pdu, err = r.buildEvent(ctx, tx, rm, ev)
		return err
	})
	if err != nil {
		return nil, err
	}
	return pdu, nil
}

// InputRemoteJoin stores a local user's join made through another server
// at the state before it (stored first with InputOutliers). Unlike
// InputEventWithState it is not soft-failed against this server's
// current state, and when no local user was joined:
//
//   - the room's old forward extremities are dropped: a state left over
//     from an earlier stay in the room is stale, and the join (checked
//     against the state the resident server gave) is the room's one
//     extremity now;
//   - the room's state becomes the state before the join in a stream
//     entry of its own, ahead of the join's entry. Both entries carry the
//     join (an entry needs an event); a consumer that keeps one row per
//     event ends up with the join at the second position, changing only
//     the user's membership, and the room's state already in place before
//     it, as for a join made here. (The sync API builds a newly joined
//     room's state as the state before the timeline's first event.)
func (r *Roomserver) InputRemoteJoin(ctx context.Context, join gomatrixserverlib.PDU, stateEvents []gomatrixserverlib.PDU) (api.InputResult, error) {
	if m, err := join.Membership(); err != nil || m != spec.Join || join.StateKey() == nil {
		return api.InputResult{}, api.BadEventf("not a join")
	}
	roomID := join.RoomID().String()
	unlock := r.lockRoom(roomID)
	defer unlock()
	var result api.InputResult
	errRejected := errors.New("join rejected")
	err := r.inTx(ctx, func(t *txn) error {
		rm, err := r.loadOrCreateRoom(ctx, t, join)
		if err != nil {
			return err
		}
		resident, err := r.localJoined(ctx, t, rm)
		if err != nil {
			return err
		}
		snap, err := r.snapshotOf(ctx, t, rm, stateEvents)
		if err != nil {
			return err
		}
		var (
			statePos          int64
			addedIDs, removed []string
		)
		if !resident {
			if _, err := t.ExecContext(ctx, sqlDeleteExtremities, rm.nid); err != nil {
				return err
			}
			if snap != rm.snapshot {
				if statePos, addedIDs, removed, err = r.replaceState(ctx, t, rm, snap); err != nil {
					return err
				}
			}
		}
		res, err := r.inputEvent(ctx, t, rm, join, inputOpts{local: true, stateBefore: &snap})
		if err != nil {
			return err
		}
		if res.status == statusRejected {
			result = api.InputResult{Status: api.InputRejected, Reason: reason(res.rejectErr)}
			return errRejected // nothing of it is kept
		}
		if statePos != 0 {
			if err := r.writeOutput(ctx, t, rm.nid, res.nid, api.OutputEvent{
				Position: statePos, RoomID: rm.id, Event: join, AddsState: nonNilIDs(addedIDs), RemovesState: nonNilIDs(removed),
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errRejected) {
		return result, nil
	}
	return result, err
}

// replaceState makes snap the room's current state and returns the
// stream position allocated for the change and the event IDs that
// entered and left the state. The caller writes the stream entry.
func (r *Roomserver) replaceState(ctx context.Context, t *txn, rm *room, snap state.SnapshotNID) (int64, []string, []string, error) {
	removedEntries, added, err := r.state.Diff(ctx, t.Tx, rm.snapshot, snap)
	if err != nil {
		return 0, nil, nil, err
	}
	addedIDs, err := r.applyStateChanges(ctx, t.Tx, rm, added)
	if err != nil {
		return 0, nil, nil, err
	}
	removedEvents, err := r.eventsByNID(ctx, t.Tx, entryNIDs(removedEntries))
	if err != nil {
		return 0, nil, nil, err
	}
	removedIDs := make([]string, len(removedEvents))
	for i, ev := range removedEvents {
		removedIDs[i] = ev.EventID()
	}
	if _, err := t.ExecContext(ctx, sqlSetRoomState, rm.nid, int64(snap)); err != nil {
		return 0, nil, nil, err
	}
	rm.snapshot = snap
	pos := r.stream.allocate()
	t.positions = append(t.positions, pos)
	return pos, addedIDs, removedIDs, nil
}

func nonNilIDs(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}

// InputOutOfBandMembership stores a membership event about a local user
// in a room this server may not be in: an invite from another server, or
// a knock or leave the user sent through another server. When a local
// user is joined and the event's prev events are known, it is input like
// any event from another server (a refusal is a *NotAllowedError);
// otherwise it is stored without state as the user's membership and
// appended to the output stream as changing that membership alone.
// Storing an event twice changes nothing.
func (r *Roomserver) InputOutOfBandMembership(ctx context.Context, pdu gomatrixserverlib.PDU) error {
	if pdu.Type() != spec.MRoomMember || pdu.StateKey() == nil {
		return api.BadEventf("not a membership event")
	}
	if _, err := pdu.Membership(); err != nil {
		return api.BadEventf("membership event without a membership")
	}
	if len(pdu.JSON()) > maxEventSize*4 {
		// Stripped state in unsigned makes it larger than a plain event.
		return &api.TooLargeError{Reason: "membership event is too large"}
	}
	roomID := pdu.RoomID().String()
	unlock := r.lockRoom(roomID)
	defer unlock()
	return r.inTx(ctx, func(t *txn) error {
		rm, err := r.loadOrCreateRoom(ctx, t, pdu)
		if err != nil {
			return err
		}
		if rm.version != pdu.Version() {
			return api.BadEventf("room %s is of version %s, not %s", rm.id, rm.version, pdu.Version())
		}
		if _, err := r.eventByID(ctx, t, pdu.EventID()); err == nil {
			return nil
		} else if !errors.Is(err, api.ErrEventNotFound) {
			return err
		}
		inRoom, err := r.localJoined(ctx, t, rm)
		if err != nil {
			return err
		}
		if inRoom && rm.snapshot != 0 {
			res, err := r.inputEvent(ctx, t, rm, pdu, inputOpts{})
			var missing *api.MissingPrevEventsError
			switch {
			case errors.As(err, &missing):
				// Not followable from here: out of band after all.
			case err != nil:
				return err
			case res.status == statusAccepted:
				return nil
			default:
				return &api.NotAllowedError{Reason: reason(res.rejectErr)}
			}
		}
		return r.storeOutOfBand(ctx, t, rm, pdu)
	})
}

// RetireMembership ends a local user's invite or knock in a room this
// server is not in, without telling any other server: it builds the
// user's leave on top of the invite or knock and stores it out of band.
// It is for rejecting an invite when no server of the room can be
// reached. *NotAllowedError when the user is not invited or knocking;
// ErrRoomNotFound.
func (r *Roomserver) RetireMembership(ctx context.Context, roomID, userID, why string) (gomatrixserverlib.PDU, error) {
	unlock := r.lockRoom(roomID)
	defer unlock()
	var leave gomatrixserverlib.PDU
	err := r.inTx(ctx, func(t *txn) error {
		rm, err := r.loadRoom(ctx, t, roomID)
		if err != nil {
			return err
		}
		var (
			membership, eventID string
			eventNID            int64
		)
		err = t.QueryRowContext(ctx, sqlSelectMembershipEvent, rm.nid, userID).Scan(&membership, &eventNID, &eventID)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && membership != spec.Invite && membership != spec.Knock) {
			return &api.NotAllowedError{Reason: "You are not invited to or knocking on this room"}
		}
		if err != nil {
			return err
		}
		prev, err := r.eventByNID(ctx, t, eventNID)
		if err != nil {
			return err
		}
		content := map[string]string{"membership": spec.Leave}
		if why != "" {
			content["reason"] = why
		}
		raw, err := json.Marshal(content)
		if err != nil {
			return err
		}
		proto := gomatrixserverlib.ProtoEvent{
			SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID, Content: raw,
			PrevEvents: []string{eventID}, AuthEvents: []string{eventID}, Depth: prev.pdu.Depth() + 1,
		}
		if leave, err = r.sign(rm.verImpl, &proto); err != nil {
			return err
		}
		return r.storeOutOfBand(ctx, t, rm, leave)
	})
	if err != nil {
		return nil, err
	}
	return leave, nil
}

// storeOutOfBand stores a membership event without state: as an outlier
// that is in the output stream, the user's membership of the room. The
// stream entry adds the event to the room's current state and removes the
// user's previous membership event, which is what the sync API's copy of
// the state should do; the roomserver's own state snapshot is untouched.
func (r *Roomserver) storeOutOfBand(ctx context.Context, t *txn, rm *room, pdu gomatrixserverlib.PDU) error {
	userID := *pdu.StateKey()
	membership, err := pdu.Membership()
	if err != nil {
		return api.BadEventf("membership event without a membership")
	}
	var (
		prevMembership, prevID string
		prevNID                int64
	)
	err = t.QueryRowContext(ctx, sqlSelectMembershipEvent, rm.nid, userID).Scan(&prevMembership, &prevNID, &prevID)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	typeNID, err := r.state.TypeNID(ctx, t.Tx, pdu.Type())
	if err != nil {
		return err
	}
	keyNID, err := r.state.StateKeyNID(ctx, t.Tx, userID)
	if err != nil {
		return err
	}
	pos := r.stream.allocate()
	t.positions = append(t.positions, pos)
	var nid int64
	if err := t.QueryRowContext(ctx, sqlInsertEvent, rm.nid, pdu.EventID(), typeNID, keyNID, pdu.Depth(),
		string(pdu.SenderID()), int64(pdu.OriginServerTS()), statusOutlier, 0, 0, pos, string(pdu.JSON())).Scan(&nid); err != nil {
		return fmt.Errorf("store out-of-band membership: %w", err)
	}
	if _, err := t.ExecContext(ctx, sqlUpsertMembership, rm.nid, userID, membership, nid, serverOfUser(userID)); err != nil {
		return err
	}
	removes := []string{}
	if prevID != "" {
		removes = append(removes, prevID)
	}
	return r.writeOutput(ctx, t, rm.nid, nid, api.OutputEvent{
		Position: pos, RoomID: rm.id, Event: pdu, AddsState: []string{pdu.EventID()}, RemovesState: removes,
	})
}

// localJoined reports whether a user of this server is joined to the room.
func (r *Roomserver) localJoined(ctx context.Context, q storage.Querier, rm *room) (bool, error) {
	rows, err := q.QueryContext(ctx, sqlSelectJoinedUsers, rm.nid)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	for rows.Next() {
		var userID string
		if err := rows.Scan(&userID); err != nil {
			return false, err
		}
		if _, server, ok := strings.Cut(userID, ":"); ok && server == string(r.serverName) {
			return true, nil
		}
	}
	return false, rows.Err()
}
