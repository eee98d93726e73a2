package syncapi

import (
	"context"
	"math"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/httputil"
)

const (
	defaultThreadsLimit = 20
	maxThreadsLimit     = 100
	// threadsScanRounds bounds how many batches one request reads past
	// roots the user may not see.
	threadsScanRounds = 10
)

const (
	// Thread roots of a room by latest activity, newest first, below a
	// position (syncapi_threads is kept by relations_storage.go).
	sqlThreadRoots = `SELECT t.latest_pos, e.event_id, e.room_version, e.event_json FROM syncapi_threads t
		JOIN syncapi_events e ON e.event_id = t.root_id AND e.room_id = t.room_id
		WHERE t.room_id = $1 AND t.latest_pos < $2 ORDER BY t.latest_pos DESC LIMIT $3`
	// The same, for threads the user started or replied in.
	sqlParticipatedThreadRoots = `SELECT t.latest_pos, e.event_id, e.room_version, e.event_json FROM syncapi_threads t
		JOIN syncapi_events e ON e.event_id = t.root_id AND e.room_id = t.room_id
		WHERE t.room_id = $1 AND t.latest_pos < $2 AND (e.sender = $4 OR EXISTS (
			SELECT 1 FROM syncapi_relations r WHERE r.parent_id = t.root_id AND r.rel_type = 'm.thread'
			AND r.sender = $4 AND NOT r.redacted))
		ORDER BY t.latest_pos DESC LIMIT $3`
)

// threads serves GET /rooms/{roomId}/threads: the room's thread roots the
// user may see, most recently active first, with their aggregations. The
// pagination token is the latest activity position to continue below.
func (s *SyncAPI) threads(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	ctx := r.Context()
	roomID := httputil.Vars(r)["roomId"]
	userID := s.userID(sess.Localpart)
	q := r.URL.Query()
	query, args := sqlThreadRoots, []any{roomID}
	switch q.Get("include") {
	case "", "all":
	case "participated":
		query = sqlParticipatedThreadRoots
	default:
		return httputil.InvalidParam("include must be all or participated")
	}
	limit := defaultThreadsLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return httputil.InvalidParam("limit must be an integer greater than zero")
		}
		limit = min(n, maxThreadsLimit)
	}
	below := int64(math.MaxInt64)
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return httputil.InvalidParam("Unknown pagination token")
		}
		below = n
	}
	if len(roomID) > maxIDLength {
		return httputil.InvalidParam("room ID too long")
	}
	if err := s.checkRoomAccess(ctx, roomID, userID); err != nil {
		return err
	}
	ignored, err := s.ignoredUsers(ctx, sess.Localpart)
	if err != nil {
		return err
	}

	var roots []gomatrixserverlib.PDU
	more := false
	for round := 0; round < threadsScanRounds && len(roots) < limit; round++ {
		batch, err := s.threadRoots(ctx, query, append(args, below, limit+1, userID))
		if err != nil {
			return err
		}
		more = len(batch) > limit
		if more {
			batch = batch[:limit]
		}
		pdus := make([]gomatrixserverlib.PDU, len(batch))
		for i, b := range batch {
			pdus[i] = b.pdu
		}
		visible, err := s.rs.VisibleEvents(ctx, userID, pdus)
		if err != nil {
			return err
		}
		shown := map[string]bool{}
		for _, v := range visible {
			shown[v.EventID()] = true
		}
		for _, b := range batch {
			if len(roots) == limit {
				more = true
				break
			}
			below = b.pos
			if shown[b.pdu.EventID()] {
				roots = append(roots, b.pdu)
			}
		}
		if !more {
			break
		}
	}
	// A root sent by an ignored user is served redacted, as a client
	// aggregating locally would see it.
	for i, root := range roots {
		if ignored[string(root.SenderID())] {
			if red, err := redactedCopy(root); err == nil {
				roots[i] = red
			}
		}
	}
	chunk, err := s.bundle(ctx, userID, sess.Localpart, roots, clientevent.Options{})
	if err != nil {
		return err
	}
	resp := map[string]any{"chunk": chunk}
	if more {
		resp["next_batch"] = strconv.FormatInt(below, 10)
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// threadRoots runs one of the root queries; pos is the latest activity.
func (s *SyncAPI) threadRoots(ctx context.Context, query string, args []any) ([]storedEvent, error) {
	if query == sqlThreadRoots {
		args = args[:3] // the user is a parameter of the participated query only
	}
	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storedEvent
	for rows.Next() {
		var ev storedEvent
		var eventID, version, js string
		if err := rows.Scan(&ev.pos, &eventID, &version, &js); err != nil {
			return nil, err
		}
		if ev.pdu, err = parseEvent(version, eventID, js); err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}

// redactedCopy is an event as its redaction would leave it.
func redactedCopy(ev gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(ev.Version())
	if err != nil {
		return nil, err
	}
	js, err := verImpl.RedactEventJSON(ev.JSON())
	if err != nil {
		return nil, err
	}
	return verImpl.NewEventFromTrustedJSONWithEventID(ev.EventID(), js, true)
}
