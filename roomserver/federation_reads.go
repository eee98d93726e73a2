package roomserver

import (
	"cmp"
	"container/heap"
	"context"
	"database/sql"
	"errors"
	"slices"
	"sort"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
	"github.com/plexus-chat/plexus/storage"
)

// Reading rooms for other servers: the federation read endpoints walk the
// event graph (/backfill, /get_missing_events), read the state before an
// event and auth chains (/state, /state_ids, /event_auth), and decide what
// a server may see by the history visibility rules applied to its users.

var _ api.FederationReader = (*Roomserver)(nil)

// fedServerMayRead is the spec's history visibility rule for a server: it may
// see an event when one of its users could. visibility is the room's
// history visibility before the event ("" or unknown values count as
// shared), memberships those of the server's users there, and joinedNow
// whether one of its users is joined now (standing in for "joined at some
// point after the event" of the shared rule).
func fedServerMayRead(visibility string, memberships []string, joinedNow bool) bool {
	if visibility == visWorldReadable {
		return true
	}
	for _, m := range memberships {
		if m == spec.Join || (m == spec.Invite && visibility == visInvited) {
			return true
		}
	}
	switch visibility {
	case visJoined, visInvited:
		return false
	default: // shared, and anything not understood
		return joinedNow
	}
}

// fedServerView is what a server's users are in one state of a room.
type fedServerView struct {
	visibility string
	members    map[string]string // the server's users -> their membership
}

func (v fedServerView) memberships() []string {
	out := make([]string, 0, len(v.members))
	for _, m := range v.members {
		out = append(out, m)
	}
	return out
}

func (v fedServerView) joined() bool {
	for _, m := range v.members {
		if m == spec.Join {
			return true
		}
	}
	return false
}

// fedUserOfServer reports whether a user ID belongs to server (everything
// after the first colon: localparts have none).
func fedUserOfServer(userID, server string) bool {
	_, s, ok := strings.Cut(userID, ":")
	return ok && strings.HasPrefix(userID, "@") && s == server
}

// sqlFedServerMembers lists the users of a server (by a LIKE on the end of
// their ID, checked exactly afterwards) with a row in the room's
// memberships: everyone who ever had a membership there keeps one.
const sqlFedServerMembers = `SELECT user_id FROM roomserver_memberships WHERE room_nid = $1 AND user_id LIKE $2 ESCAPE '\'`

// fedServerUserKeys returns the member state keys of the server's users
// who ever had a membership in the room. (A user whose only membership
// events lost out in state resolution is not found: such a user is
// treated as never having been in the room.)
func (r *Roomserver) fedServerUserKeys(ctx context.Context, q storage.Querier, roomNID int64, server string) ([]state.Key, error) {
	escaped := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(server)
	rows, err := q.QueryContext(ctx, sqlFedServerMembers, roomNID, "%:"+escaped)
	if err != nil {
		return nil, err
	}
	var users []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			rows.Close()
			return nil, err
		}
		if fedUserOfServer(u, server) {
			users = append(users, u)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var keys []state.Key
	for _, u := range users {
		nid, ok, err := r.state.LookupStateKeyNID(ctx, q, u)
		if err != nil {
			return nil, err
		}
		if ok {
			keys = append(keys, state.Key{TypeNID: state.TypeMember, StateKeyNID: nid})
		}
	}
	return keys, nil
}

// fedServerViewAt reads the history visibility of a state snapshot and the
// memberships of the server's users in it (userKeys, from
// fedServerUserKeys).
func (r *Roomserver) fedServerViewAt(ctx context.Context, q storage.Querier, snap state.SnapshotNID, userKeys []state.Key) (fedServerView, error) {
	v := fedServerView{members: map[string]string{}}
	if snap == 0 {
		return v, nil
	}
	keys := append([]state.Key{{TypeNID: state.TypeHistoryVisibility, StateKeyNID: state.EmptyStateKey}}, userKeys...)
	entries, err := r.state.Lookup(ctx, q, snap, keys)
	if err != nil {
		return v, err
	}
	evs, err := r.eventsByNID(ctx, q, entryNIDs(entries))
	if err != nil {
		return v, err
	}
	for _, ev := range evs {
		switch {
		case ev.Type() == spec.MRoomHistoryVisibility:
			v.visibility = gjson.GetBytes(ev.Content(), "history_visibility").String()
		case ev.Type() == spec.MRoomMember && ev.StateKey() != nil:
			v.members[*ev.StateKey()] = gjson.GetBytes(ev.Content(), "membership").String()
		}
	}
	return v, nil
}

// ServerCanSee reports which of the events the server may see.
func (r *Roomserver) ServerCanSee(ctx context.Context, server string, events []gomatrixserverlib.PDU) ([]bool, error) {
	out := make([]bool, len(events))
	if len(events) == 0 {
		return out, nil
	}
	q := r.db.Reader()
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.EventID()
	}
	rows, err := r.fedEventsByIDs(ctx, q, ids)
	if err != nil {
		return nil, err
	}
	// Per room: the server's users, and the view of the current state.
	type roomCtx struct {
		keys []state.Key
		now  fedServerView
	}
	rooms := map[string]roomCtx{}
	bySnapshot := map[state.SnapshotNID]fedServerView{}
	for i, ev := range events {
		row, ok := rows[ev.EventID()]
		if !ok || (row.status != statusAccepted && row.status != statusOutlier) {
			continue
		}
		roomID := row.pdu.RoomID().String()
		rc, ok := rooms[roomID]
		if !ok {
			rm, err := r.loadRoom(ctx, q, roomID)
			if err != nil {
				return nil, err
			}
			if rc.keys, err = r.fedServerUserKeys(ctx, q, rm.nid, server); err != nil {
				return nil, err
			}
			if rc.now, err = r.fedServerViewAt(ctx, q, rm.snapshot, rc.keys); err != nil {
				return nil, err
			}
			rooms[roomID] = rc
		}
		now := rc.now
		// An outlier has no known state before it: the current state
		// stands in.
		view := now
		if row.status == statusAccepted {
			if view, ok = bySnapshot[row.before]; !ok {
				if view, err = r.fedServerViewAt(ctx, q, row.before, rc.keys); err != nil {
					return nil, err
				}
				bySnapshot[row.before] = view
			}
		}
		joinedNow := now.joined()
		allowed := fedServerMayRead(view.visibility, view.memberships(), joinedNow)
		if sk := row.pdu.StateKey(); !allowed && sk != nil {
			switch {
			case row.pdu.Type() == spec.MRoomHistoryVisibility && *sk == "":
				// Seen if the visibility before or after allows it.
				after := gjson.GetBytes(row.pdu.Content(), "history_visibility").String()
				allowed = fedServerMayRead(after, view.memberships(), joinedNow)
			case row.pdu.Type() == spec.MRoomMember && fedUserOfServer(*sk, server):
				// A user's own membership event: seen if the membership
				// before or after allows it.
				changed := fedServerView{visibility: view.visibility, members: map[string]string{}}
				for u, m := range view.members {
					changed.members[u] = m
				}
				changed.members[*sk] = gjson.GetBytes(row.pdu.Content(), "membership").String()
				allowed = fedServerMayRead(view.visibility, changed.memberships(), joinedNow)
			}
		}
		out[i] = allowed
	}
	return out, nil
}

// sqlFedMembersIn lists the users with one of two memberships now.
const (
	// The servers with a member in one of two memberships, from the index
	// on (room_nid, membership, server_name).
	// The servers with members of a membership, one index seek per
	// server (a loose index scan over roomserver_memberships_servers): a
	// DISTINCT read every member row, and the sender and the key server
	// ask for every event, which made each event in a room of 10,000
	// members cost 10,000 rows.
	sqlServersIn = `WITH RECURSIVE s (name) AS (
			SELECT MIN(server_name) FROM roomserver_memberships WHERE room_nid = $1 AND membership = $2
			UNION ALL
			SELECT (SELECT MIN(m.server_name) FROM roomserver_memberships m
				WHERE m.room_nid = $1 AND m.membership = $2 AND m.server_name > s.name)
			FROM s WHERE s.name IS NOT NULL
		) SELECT name FROM s WHERE name IS NOT NULL`
	sqlServerIn = `SELECT 1 FROM roomserver_memberships
		WHERE room_nid = $1 AND membership IN ($2, $3) AND server_name = $4 LIMIT 1`
)

// serverOfUser is the server name of a user ID: everything after the
// first colon (a localpart has none).
func serverOfUser(userID string) string {
	_, server, _ := strings.Cut(userID, ":")
	return server
}

// ServerParticipates reports whether the server has a user joined or
// invited now, or the room is world_readable now.
func (r *Roomserver) ServerParticipates(ctx context.Context, roomID, server string) (bool, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return false, err
	}
	var one int
	err = q.QueryRowContext(ctx, sqlServerIn, rm.nid, spec.Join, spec.Invite, server).Scan(&one)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return false, err
	}
	hv, _, err := r.visibilityAt(ctx, q, rm.snapshot, 0, false)
	return hv == visWorldReadable, err
}

// ResidentServers lists the servers with a user joined to the room now,
// sorted.
func (r *Roomserver) ResidentServers(ctx context.Context, roomID string) ([]string, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	rows, err := q.QueryContext(ctx, sqlServersIn, rm.nid, spec.Join)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		if s != "" {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out, rows.Err()
}

// fedRoomEvent loads an event of the room that is part of its graph: an
// accepted event or an outlier.
func (r *Roomserver) fedRoomEvent(ctx context.Context, q storage.Querier, roomID, eventID string) (*storedEvent, error) {
	ev, err := r.eventByID(ctx, q, eventID)
	if err != nil {
		return nil, err
	}
	if !fedInGraph(ev, roomID) {
		return nil, api.ErrEventNotFound
	}
	return ev, nil
}

// fedInGraph reports whether a stored event of the room may be served to
// other servers: accepted events and outliers, not rejected or
// soft-failed ones.
func fedInGraph(ev *storedEvent, roomID string) bool {
	return ev.pdu.RoomID().String() == roomID && (ev.status == statusAccepted || ev.status == statusOutlier)
}

// ServerMayReadStateAt reports whether the server was in the room at the
// event, or the room was world_readable there.
func (r *Roomserver) ServerMayReadStateAt(ctx context.Context, roomID, eventID, server string) (bool, error) {
	q := r.db.Reader()
	ev, err := r.fedRoomEvent(ctx, q, roomID, eventID)
	if err != nil {
		return false, err
	}
	if ev.status != statusAccepted {
		return false, api.ErrEventNotFound
	}
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return false, err
	}
	keys, err := r.fedServerUserKeys(ctx, q, rm.nid, server)
	if err != nil {
		return false, err
	}
	view, err := r.fedServerViewAt(ctx, q, ev.before, keys)
	if err != nil {
		return false, err
	}
	if view.visibility == visWorldReadable || view.joined() {
		return true, nil
	}
	if sk := ev.pdu.StateKey(); sk != nil && ev.pdu.Type() == spec.MRoomMember && fedUserOfServer(*sk, server) {
		return gjson.GetBytes(ev.pdu.Content(), "membership").String() == spec.Join, nil
	}
	return false, nil
}

// fedMaxGraphWalk bounds the events one walk may look at, whatever the limit.
const fedMaxGraphWalk = 10000

// fedEventHeap orders events deepest first, then newest stored first.
type fedEventHeap []*storedEvent

func (h fedEventHeap) Len() int { return len(h) }
func (h fedEventHeap) Less(i, j int) bool {
	if h[i].depth != h[j].depth {
		return h[i].depth > h[j].depth
	}
	return h[i].nid > h[j].nid
}
func (h fedEventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *fedEventHeap) Push(x any)   { *h = append(*h, x.(*storedEvent)) }
func (h *fedEventHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// BackfillEvents walks back from the given events, deepest first.
func (r *Roomserver) BackfillEvents(ctx context.Context, roomID string, from []string, limit int) ([]gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	if _, err := r.loadRoom(ctx, q, roomID); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	seen := map[string]bool{}
	h := &fedEventHeap{}
	push := func(ids []string) error {
		var want []string
		for _, id := range ids {
			if !seen[id] && len(seen) < fedMaxGraphWalk {
				seen[id] = true
				want = append(want, id)
			}
		}
		found, err := r.fedEventsByIDs(ctx, q, want)
		if err != nil {
			return err
		}
		for _, id := range want {
			if ev, ok := found[id]; ok && fedInGraph(ev, roomID) {
				heap.Push(h, ev)
			}
		}
		return nil
	}
	if err := push(from); err != nil {
		return nil, err
	}
	var out []gomatrixserverlib.PDU
	for h.Len() > 0 && len(out) < limit {
		ev := heap.Pop(h).(*storedEvent)
		out = append(out, ev.pdu)
		if err := push(ev.pdu.PrevEventIDs()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// MissingEventsBetween walks breadth-first from latest's prev_events.
func (r *Roomserver) MissingEventsBetween(ctx context.Context, roomID string, earliest, latest []string, limit int, minDepth int64) ([]gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	if _, err := r.loadRoom(ctx, q, roomID); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	seen := map[string]bool{}
	for _, id := range earliest {
		seen[id] = true
	}
	var queue []string
	enqueue := func(ids []string) {
		for _, id := range ids {
			if !seen[id] && len(seen) < fedMaxGraphWalk {
				seen[id] = true
				queue = append(queue, id)
			}
		}
	}
	var starts []string
	for _, id := range latest {
		if !seen[id] {
			seen[id] = true
			starts = append(starts, id)
		}
	}
	found, err := r.fedEventsByIDs(ctx, q, starts)
	if err != nil {
		return nil, err
	}
	for _, id := range starts {
		if ev, ok := found[id]; ok && fedInGraph(ev, roomID) {
			enqueue(ev.pdu.PrevEventIDs())
		}
	}
	var out []*storedEvent
	for len(queue) > 0 && len(out) < limit {
		level := queue
		queue = nil
		found, err := r.fedEventsByIDs(ctx, q, level)
		if err != nil {
			return nil, err
		}
		for _, id := range level {
			ev, ok := found[id]
			if !ok || !fedInGraph(ev, roomID) || ev.depth < minDepth {
				continue
			}
			out = append(out, ev)
			if len(out) == limit {
				break
			}
			enqueue(ev.pdu.PrevEventIDs())
		}
	}
	slices.SortStableFunc(out, func(a, b *storedEvent) int {
		if c := cmp.Compare(a.depth, b.depth); c != 0 {
			return c
		}
		return cmp.Compare(a.nid, b.nid)
	})
	pdus := make([]gomatrixserverlib.PDU, len(out))
	for i, ev := range out {
		pdus[i] = ev.pdu
	}
	return pdus, nil
}

// StateBeforeEventWithAuthChain returns the state before an event and the
// auth chain of that state.
func (r *Roomserver) StateBeforeEventWithAuthChain(ctx context.Context, roomID, eventID string) ([]gomatrixserverlib.PDU, []gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	ev, err := r.fedRoomEvent(ctx, q, roomID, eventID)
	if err != nil {
		return nil, nil, err
	}
	if ev.status != statusAccepted {
		return nil, nil, api.ErrEventNotFound // an outlier: its state is unknown
	}
	entries, err := r.state.Entries(ctx, q, ev.before)
	if err != nil {
		return nil, nil, err
	}
	stateEvents, err := r.eventsByNID(ctx, q, entryNIDs(entries))
	if err != nil {
		return nil, nil, err
	}
	chain, err := r.fedFullAuthChain(ctx, q, roomID, stateEvents)
	if err != nil {
		return nil, nil, err
	}
	return stateEvents, chain, nil
}

// EventAuthChain returns the auth chain of one event.
func (r *Roomserver) EventAuthChain(ctx context.Context, roomID, eventID string) ([]gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	ev, err := r.fedRoomEvent(ctx, q, roomID, eventID)
	if err != nil {
		return nil, err
	}
	return r.fedFullAuthChain(ctx, q, roomID, []gomatrixserverlib.PDU{ev.pdu})
}

// fedFullAuthChain returns the auth events of the events, theirs, and so on,
// loaded a level at a time. The room's create event is added when the walk
// did not reach it: room version 12 leaves it out of auth_events, and
// every chain rests on it. Auth events this server never stored are
// skipped.
func (r *Roomserver) fedFullAuthChain(ctx context.Context, q storage.Querier, roomID string, events []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	seen := map[string]bool{}
	var next []string
	add := func(ids []string) {
		for _, id := range ids {
			if !seen[id] {
				seen[id] = true
				next = append(next, id)
			}
		}
	}
	for _, ev := range events {
		add(ev.AuthEventIDs())
	}
	var out []gomatrixserverlib.PDU
	haveCreate := false
	for len(next) > 0 {
		level := next
		next = nil
		found, err := r.fedEventsByIDs(ctx, q, level)
		if err != nil {
			return nil, err
		}
		for _, id := range level {
			ev, ok := found[id]
			if !ok || ev.pdu.RoomID().String() != roomID {
				continue
			}
			if ev.pdu.Type() == spec.MRoomCreate {
				haveCreate = true
			}
			out = append(out, ev.pdu)
			add(ev.pdu.AuthEventIDs())
		}
	}
	if !haveCreate {
		onlyCreate := len(events) == 1 && events[0].Type() == spec.MRoomCreate
		if !onlyCreate {
			create, err := r.CurrentStateEvent(ctx, roomID, spec.MRoomCreate, "")
			if err != nil {
				return nil, err
			}
			if create != nil {
				out = append(out, create)
			}
		}
	}
	return out, nil
}

// sqlFedEventsByIDPrefix reads events by ID in bulk.
const sqlFedEventsByIDPrefix = `SELECT ` + sqlEventColumns + ` FROM roomserver_events e
	JOIN roomserver_rooms r ON r.room_nid = e.room_nid WHERE e.event_id IN (`

// fedEventsByIDs loads stored events by ID, 500 a query; unknown IDs are
// missing from the map.
func (r *Roomserver) fedEventsByIDs(ctx context.Context, q storage.Querier, ids []string) (map[string]*storedEvent, error) {
	keys := make([]any, len(ids))
	for i, id := range ids {
		keys[i] = id
	}
	out := make(map[string]*storedEvent, len(ids))
	err := eventsIn(ctx, q, sqlFedEventsByIDPrefix, keys, func(ev *storedEvent) { out[ev.pdu.EventID()] = ev })
	return out, err
}
