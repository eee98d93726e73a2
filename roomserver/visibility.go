package roomserver

import (
	"context"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/state"
	"github.com/plexus-chat/plexus/storage"
)

// History visibility values (m.room.history_visibility).
const (
	visWorldReadable = "world_readable"
	visShared        = "shared"
	visInvited       = "invited"
	visJoined        = "joined"
)

// mayRead is the spec's rule for whether a user may see one event (the
// history visibility module's "Server behaviour"). visibility is the
// room's history_visibility at the event ("" or unknown values count as
// shared), membership the user's membership at the event ("" when none),
// and joinedLater whether the user joined the room at some point after it.
func mayRead(visibility, membership string, joinedLater bool) bool {
	if visibility == visWorldReadable || membership == spec.Join {
		return true
	}
	switch visibility {
	case visJoined:
		return false
	case visInvited:
		return membership == spec.Invite
	default: // shared, and anything not understood
		return joinedLater
	}
}

// eventVisibility is what decides one event: the state before it and its
// own content where it changes the answer.
type eventVisibility struct {
	visibility, membership string // in the state before the event
	// visibilityAfter and membershipAfter are set when the event itself is
	// a history visibility event, or the user's own membership event: the
	// user may see those if the value before or after lets them.
	visibilityAfter, membershipAfter string
	joinedLater                      bool
}

func (v eventVisibility) allowed() bool {
	if mayRead(v.visibility, v.membership, v.joinedLater) {
		return true
	}
	if v.visibilityAfter != "" && mayRead(v.visibilityAfter, v.membership, v.joinedLater) {
		return true
	}
	return v.membershipAfter != "" && mayRead(v.visibility, v.membershipAfter, v.joinedLater)
}

// eventRow is what visibility needs of a stored event.
type eventRow struct {
	depth  int64
	before state.SnapshotNID
}

// VisibleEvents returns the events the user may see, in order. The state
// before the events is read once per distinct snapshot (consecutive
// messages share one), and the user's membership history once per room.
func (r *Roomserver) VisibleEvents(ctx context.Context, userID string, events []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	if len(events) == 0 {
		return nil, nil
	}
	q := r.db.Reader()
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.EventID()
	}
	rows, err := r.eventRows(ctx, q, ids)
	if err != nil {
		return nil, err
	}
	keyNID, known, err := r.state.LookupStateKeyNID(ctx, q, userID)
	if err != nil {
		return nil, err
	}

	// The user's joins in each room, deep enough to judge every event, and
	// the rooms they forgot: those keep nothing but world_readable history
	// for them (the spec's /forget).
	joins := map[string][]int64{}
	forgotten := map[string]bool{}
	minDepth := map[string]int64{}
	for _, ev := range events {
		row, ok := rows[ev.EventID()]
		if !ok {
			continue
		}
		room := ev.RoomID().String()
		if d, seen := minDepth[room]; !seen || row.depth < d {
			minDepth[room] = row.depth
		}
	}
	if known {
		for roomID, depth := range minDepth {
			if forgotten[roomID], err = r.RoomForgotten(ctx, roomID, userID); err != nil {
				return nil, err
			}
			if forgotten[roomID] {
				continue
			}
			rm, err := r.loadRoom(ctx, q, roomID)
			if err != nil {
				return nil, err
			}
			changes, err := r.membershipHistory(ctx, q, rm.snapshot, keyNID, depth)
			if err != nil {
				return nil, err
			}
			for _, c := range changes {
				if c.membership == spec.Join {
					joins[roomID] = append(joins[roomID], c.depth)
				}
			}
		}
	}

	type atState struct{ visibility, membership string }
	bySnapshot := map[state.SnapshotNID]atState{}
	out := make([]gomatrixserverlib.PDU, 0, len(events))
	for _, ev := range events {
		row, ok := rows[ev.EventID()]
		if !ok {
			continue
		}
		at, ok := bySnapshot[row.before]
		if !ok {
			at.visibility, at.membership, err = r.visibilityAt(ctx, q, row.before, keyNID, known)
			if err != nil {
				return nil, err
			}
			bySnapshot[row.before] = at
		}
		v := eventVisibility{visibility: at.visibility, membership: at.membership}
		if forgotten[ev.RoomID().String()] {
			v.membership = ""
		}
		for _, d := range joins[ev.RoomID().String()] {
			if d > row.depth {
				v.joinedLater = true
				break
			}
		}
		if sk := ev.StateKey(); sk != nil {
			switch {
			case ev.Type() == spec.MRoomHistoryVisibility && *sk == "":
				v.visibilityAfter = gjson.GetBytes(ev.Content(), "history_visibility").String()
			case ev.Type() == spec.MRoomMember && *sk == userID && !forgotten[ev.RoomID().String()]:
				v.membershipAfter = gjson.GetBytes(ev.Content(), "membership").String()
			}
		}
		if v.allowed() {
			out = append(out, ev)
		}
	}
	return out, nil
}

// visibilityAt reads the history visibility and the user's membership in
// a state snapshot.
func (r *Roomserver) visibilityAt(ctx context.Context, q storage.Querier, snap state.SnapshotNID, keyNID int64, known bool) (visibility, membership string, err error) {
	if snap == 0 {
		return "", "", nil
	}
	keys := []state.Key{{TypeNID: state.TypeHistoryVisibility, StateKeyNID: state.EmptyStateKey}}
	if known {
		keys = append(keys, state.Key{TypeNID: state.TypeMember, StateKeyNID: keyNID})
	}
	entries, err := r.state.Lookup(ctx, q, snap, keys)
	if err != nil {
		return "", "", err
	}
	evs, err := r.eventsByNID(ctx, q, entryNIDs(entries))
	if err != nil {
		return "", "", err
	}
	for i, ev := range evs {
		switch entries[i].TypeNID {
		case state.TypeHistoryVisibility:
			visibility = gjson.GetBytes(ev.Content(), "history_visibility").String()
		case state.TypeMember:
			membership = gjson.GetBytes(ev.Content(), "membership").String()
		}
	}
	return visibility, membership, nil
}

// membershipChange is one of a user's membership events in a room.
type membershipChange struct {
	nid        int64
	depth      int64
	membership string
	after      state.SnapshotNID // the room state after the event
}

// maxMembershipHistory bounds the walk back through a user's membership
// events, against a room where someone joins and leaves without end.
const maxMembershipHistory = 1000

// membershipHistory walks a user's membership events back from the one in
// the state snap, each time to the one in the state before it, newest
// first. It stops after the first event shallower than minDepth: older
// ones cannot come after any event of interest.
func (r *Roomserver) membershipHistory(ctx context.Context, q storage.Querier, snap state.SnapshotNID, keyNID, minDepth int64) ([]membershipChange, error) {
	var out []membershipChange
	key := state.Key{TypeNID: state.TypeMember, StateKeyNID: keyNID}
	seen := map[int64]bool{}
	for snap != 0 && len(out) < maxMembershipHistory {
		entries, err := r.state.Lookup(ctx, q, snap, []state.Key{key})
		if err != nil || len(entries) == 0 {
			return out, err
		}
		nid := entries[0].EventNID
		if seen[nid] {
			return nil, fmt.Errorf("membership history of state key %d loops at event %d", keyNID, nid)
		}
		seen[nid] = true
		ev, err := r.eventByNID(ctx, q, nid)
		if err != nil {
			return nil, err
		}
		out = append(out, membershipChange{
			nid: nid, depth: ev.depth, after: ev.after,
			membership: gjson.GetBytes(ev.pdu.Content(), "membership").String(),
		})
		if ev.depth < minDepth {
			break
		}
		snap = ev.before
	}
	return out, nil
}

// sqlSelectEventRowsPrefix reads accepted events only: outliers have no
// known state before them to judge by, so nobody sees them.
var sqlSelectEventRowsPrefix = `SELECT event_id, depth, before_snapshot_nid FROM roomserver_events
	WHERE status = ` + fmt.Sprint(statusAccepted) + ` AND event_id IN (`

// eventRows loads the depth and state snapshot of accepted events by ID.
func (r *Roomserver) eventRows(ctx context.Context, q storage.Querier, ids []string) (map[string]eventRow, error) {
	out := make(map[string]eventRow, len(ids))
	const chunk = 500
	for start := 0; start < len(ids); start += chunk {
		part := ids[start:min(start+chunk, len(ids))]
		args := make([]any, len(part))
		ph := make([]string, len(part))
		for i, id := range part {
			args[i] = id
			ph[i] = fmt.Sprintf("$%d", i+1)
		}
		rows, err := q.QueryContext(ctx, sqlSelectEventRowsPrefix+strings.Join(ph, ",")+")", args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			var row eventRow
			var before int64
			if err := rows.Scan(&id, &row.depth, &before); err != nil {
				rows.Close()
				return nil, err
			}
			row.before = state.SnapshotNID(before)
			out[id] = row
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
