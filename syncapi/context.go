package syncapi

import (
	"database/sql"
	"errors"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/eventfilter"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// context serves the events around one event, and the state at the last
// of them.
func (s *SyncAPI) context(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	ctx := r.Context()
	vars := httputil.Vars(r)
	roomID, eventID := vars["roomId"], vars["eventId"]
	userID := s.userID(sess.Localpart)
	q := r.URL.Query()
	limit := defaultMessagesLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return httputil.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, 100)
	}
	var filter *eventfilter.RoomEventFilter
	if v := q.Get("filter"); v != "" {
		f, err := eventfilter.ParseRoomEventFilter([]byte(v))
		if err != nil {
			return httputil.BadJSON("filter: %v", err)
		}
		filter = f
	}
	if err := s.checkRoomAccess(ctx, roomID, userID); err != nil {
		return err
	}
	var pos sql.NullInt64
	var version, js string
	err := s.db.Reader().QueryRowContext(ctx, `SELECT pos, room_version, event_json FROM syncapi_events
		WHERE event_id = $1 AND room_id = $2`, eventID, roomID).Scan(&pos, &version, &js)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !pos.Valid) {
		return httputil.NotFound("Event not found")
	}
	if err != nil {
		return err
	}
	target, err := parseEvent(version, eventID, js)
	if err != nil {
		return err
	}
	visible, err := s.rs.VisibleEvents(ctx, userID, []gomatrixserverlib.PDU{target})
	if err != nil {
		return err
	}
	if len(visible) == 0 {
		return httputil.NotFound("Event not found")
	}
	before, after := limit/2, limit-limit/2
	now, err := s.streamPos(ctx)
	if err != nil {
		return err
	}
	beforeEvents, err := s.visibleWindow(r, roomID, userID, 0, pos.Int64-1, before, true, filter)
	if err != nil {
		return err
	}
	afterEvents, err := s.visibleWindow(r, roomID, userID, pos.Int64, now, after, false, filter)
	if err != nil {
		return err
	}
	start, end := pos.Int64-1, pos.Int64
	if len(beforeEvents) > 0 {
		start = beforeEvents[len(beforeEvents)-1].pos - 1
	}
	if len(afterEvents) > 0 {
		end = afterEvents[len(afterEvents)-1].pos
	}
	// The state at the last event returned.
	b := &builder{s: s, tx: nil, req: &syncRequest{userID: userID, filter: &eventfilter.Filter{}}}
	var stateEvents []clientevent.Event
	err = s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		b.tx = tx
		var err error
		stateEvents, err = b.fullState(ctx, roomID, end, nil)
		return err
	})
	if err != nil {
		return err
	}
	if filter != nil && filter.LazyLoadMembers {
		var pdus []gomatrixserverlib.PDU
		for _, e := range append(append([]storedEvent{}, beforeEvents...), afterEvents...) {
			pdus = append(pdus, e.pdu)
		}
		if stateEvents, err = s.membersFor(ctx, roomID, append(pdus, target)); err != nil {
			return err
		}
	}
	// The sync format leaves room_id out; /context has it (and a version
	// 12 create event has none of its own to fall back on).
	for i := range stateEvents {
		stateEvents[i].RoomID = roomID
	}
	// All events of the answer are aggregated together (aggregations.go).
	all := []gomatrixserverlib.PDU{target}
	for _, e := range append(append([]storedEvent{}, beforeEvents...), afterEvents...) {
		all = append(all, e.pdu)
	}
	formatted, err := s.bundle(ctx, userID, sess.Localpart, all, clientevent.Options{})
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"event":         formatted[0],
		"events_before": formatted[1 : 1+len(beforeEvents)],
		"events_after":  formatted[1+len(beforeEvents):],
		"start":         Token{PDU: start}.String(),
		"end":           Token{PDU: end}.String(),
		"state":         stateEvents,
	})
	return nil
}

// visibleWindow reads up to limit visible events of a room next to a
// position: backwards from at (inclusive) or forwards from after it.
func (s *SyncAPI) visibleWindow(r *http.Request, roomID, userID string, low, high int64, limit int, backwards bool, filter *eventfilter.RoomEventFilter) ([]storedEvent, error) {
	if limit == 0 {
		return nil, nil
	}
	ctx := r.Context()
	query := sqlRoomEventsAsc
	if backwards {
		query = sqlRoomEventsDesc
	}
	batch, err := queryEvents(ctx, s.db.Reader(), query, roomID, low, high, limit)
	if err != nil {
		return nil, err
	}
	var pdus []gomatrixserverlib.PDU
	byID := map[string]storedEvent{}
	for _, ev := range batch {
		if filter == nil || matchesRoomEventFilter(filter, ev.pdu) {
			pdus = append(pdus, ev.pdu)
			byID[ev.pdu.EventID()] = ev
		}
	}
	visible, err := s.rs.VisibleEvents(ctx, userID, pdus)
	if err == nil {
		visible, err = s.dropIgnored(ctx, userID, visible) // ignored.go
	}
	if err != nil {
		return nil, err
	}
	out := make([]storedEvent, 0, len(visible))
	for _, v := range visible {
		out = append(out, byID[v.EventID()])
	}
	return out, nil
}
