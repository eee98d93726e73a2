package syncapi

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/eventfilter"
	"github.com/plexus-chat/plexus/internal/httputil"
)

const (
	defaultMessagesLimit = 10
	maxMessagesLimit     = 1000
)

// History pages through a room in stream order with the same tokens as
// /sync: a token is a position, and paging backwards from it returns the
// events at or before it.

func (s *SyncAPI) messages(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	ctx := r.Context()
	roomID := httputil.Vars(r)["roomId"]
	q := r.URL.Query()
	userID := s.userID(sess.Localpart)
	backwards := false
	switch q.Get("dir") {
	case "b":
		backwards = true
	case "f":
	case "":
		return httputil.MissingParam("dir is required")
	default:
		return httputil.InvalidParam("dir must be b or f")
	}
	limit := defaultMessagesLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return httputil.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, maxMessagesLimit)
	}
	var filter *eventfilter.RoomEventFilter
	if v := q.Get("filter"); v != "" {
		f, err := eventfilter.ParseRoomEventFilter([]byte(v))
		if err != nil {
			return httputil.BadJSON("filter: %v", err)
		}
		filter = f
	}
	// Backfill hook (backfill.go): a from token inside history fetched
	// from other servers ("b..." tokens) is served there.
	if p, ok := parseBackfillToken(q.Get("from")); ok {
		return s.backfillMessages(w, r, roomID, userID, backwards, limit, filter, p)
	}
	now, err := s.streamPos(ctx)
	if err != nil {
		return err
	}
	from, err := tokenParam(q.Get("from"), now, backwards)
	if err != nil {
		return err
	}
	to := int64(-1)
	var toBackfill *backfillPos // backfill hook: a to token inside fetched history
	if v := q.Get("to"); v != "" {
		if p, ok := parseBackfillToken(v); ok {
			toBackfill = &p
		} else {
			t, err := ParseToken(v)
			if err != nil {
				return httputil.InvalidParam("to is not a token from this server")
			}
			to = t.PDU
		}
	}
	if err := s.checkRoomAccess(ctx, roomID, userID); err != nil {
		return err
	}

	var chunk []gomatrixserverlib.PDU
	cursor := from
	exhausted := false
	for len(chunk) < limit && !exhausted {
		var batch []storedEvent
		if backwards {
			low := int64(0)
			if to >= 0 {
				low = to
			}
			batch, err = queryEvents(ctx, s.db.Reader(), sqlRoomEventsDesc, roomID, low, cursor, limit+1)
		} else {
			high := now
			if to >= 0 {
				high = min(to, now)
			}
			batch, err = queryEvents(ctx, s.db.Reader(), sqlRoomEventsAsc, roomID, cursor, high, limit+1)
		}
		if err != nil {
			return err
		}
		exhausted = len(batch) < limit+1
		var pdus []gomatrixserverlib.PDU
		for _, ev := range batch {
			if len(chunk)+len(pdus) == limit {
				exhausted = false
				break
			}
			if backwards {
				cursor = ev.pos - 1
			} else {
				cursor = ev.pos
			}
			if filter == nil || matchesRoomEventFilter(filter, ev.pdu) {
				pdus = append(pdus, ev.pdu)
			}
		}
		visible, err := s.rs.VisibleEvents(ctx, userID, pdus)
		if err == nil {
			visible, err = s.dropIgnored(ctx, userID, visible) // ignored.go
		}
		if err != nil {
			return err
		}
		chunk = append(chunk, visible...)
		if len(batch) == 0 {
			exhausted = true
		}
	}
	// Backfill hook (backfill.go): backwards, once this server's history
	// of the room has run out, go on with older history fetched from other
	// servers; the end token then comes from there.
	var backfillEnd *string
	if backwards && exhausted && to < 0 && limit > 0 {
		more, end, err := s.continueWithBackfill(ctx, roomID, userID, filter, limit-len(chunk), toBackfill)
		if err == nil {
			more, err = s.dropIgnored(ctx, userID, more) // ignored.go
		}
		if err != nil {
			return err
		}
		// Nothing from other servers: the local start is the room's start.
		if len(more) > 0 || end != "" {
			chunk, backfillEnd = append(chunk, more...), &end
		}
	}
	formatted, err := s.bundle(ctx, userID, sess.Localpart, chunk, clientevent.Options{}) // with aggregations.go
	if err != nil {
		return err
	}
	resp := map[string]any{
		"start": Token{PDU: from}.String(),
		"chunk": formatted,
	}
	// Backwards, no end means the start of the room was reached. Forwards
	// there is always an end: newer events may still come. A chunk that
	// reached the start still gets an end (which then gives an empty
	// chunk), as clients and SyTest expect an end with every non-empty
	// chunk.
	if backfillEnd != nil {
		if *backfillEnd != "" {
			resp["end"] = *backfillEnd
		}
	} else if (!exhausted && limit > 0) || !backwards || len(chunk) > 0 {
		resp["end"] = Token{PDU: cursor}.String()
	}
	if filter != nil && filter.LazyLoadMembers {
		members, err := s.membersFor(ctx, roomID, chunk)
		if err != nil {
			return err
		}
		resp["state"] = members
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// tokenParam reads a from token; without one, backwards paging starts at
// the newest event and forwards paging at the oldest.
func tokenParam(v string, now int64, backwards bool) (int64, error) {
	if v == "" {
		if backwards {
			return now, nil
		}
		return 0, nil
	}
	t, err := ParseToken(v)
	if err != nil {
		return 0, httputil.InvalidParam("from is not a token from this server")
	}
	return t.PDU, nil
}

// checkRoomAccess refuses users who were never in a room (unless its
// history is world readable); which events they then see is decided per
// event by the roomserver's history visibility rules.
func (s *SyncAPI) checkRoomAccess(ctx context.Context, roomID, userID string) error {
	var one int
	err := s.db.Reader().QueryRowContext(ctx, `SELECT 1 FROM syncapi_events
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 LIMIT 1`, roomID, userID).Scan(&one)
	if err == nil {
		return nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	var version, js string
	err = s.db.Reader().QueryRowContext(ctx, sqlCurrentStateEvent, roomID, "m.room.history_visibility", "").Scan(&version, &js)
	if err == nil {
		pdu, perr := parseEvent(version, "", js)
		if perr == nil {
			if hv, herr := pdu.HistoryVisibility(); herr == nil && hv == gomatrixserverlib.HistoryVisibilityWorldReadable {
				return nil
			}
		}
	} else if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	return httputil.Forbidden("You are not allowed to view this room's history")
}

// membersFor returns the current member events of the senders of events,
// for clients that lazy-load members.
func (s *SyncAPI) membersFor(ctx context.Context, roomID string, events []gomatrixserverlib.PDU) ([]clientevent.Event, error) {
	seen := map[spec.SenderID]bool{}
	out := []clientevent.Event{}
	for _, ev := range events {
		if seen[ev.SenderID()] {
			continue
		}
		seen[ev.SenderID()] = true
		var version, js, eventID string
		err := s.db.Reader().QueryRowContext(ctx, `SELECT e.room_version, e.event_json, e.event_id FROM syncapi_current_state s
			JOIN syncapi_events e ON e.event_id = s.event_id WHERE s.room_id = $1 AND s.type = 'm.room.member' AND s.state_key = $2`,
			roomID, string(ev.SenderID())).Scan(&version, &js, &eventID)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, err
		}
		pdu, err := parseEvent(version, eventID, js)
		if err != nil {
			return nil, err
		}
		out = append(out, clientevent.Format(pdu, clientevent.Options{}))
	}
	return out, nil
}
