package syncapi

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/httputil"
)

const (
	defaultRelationsLimit = 5
	maxRelationsLimit     = 100
	// relationsDepth is how far recurse=true follows relations of
	// relations; the spec asks for at least three levels.
	relationsDepth = 3
)

// relationsPage is one page of a parent's children.
type relationsPage struct {
	parentID, roomID, relType, eventType string
	depth                                int   // 1: direct children only
	low, high                            int64 // the stream window (low, high]
	backwards                            bool
	limit                                int
}

// relations serves GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]:
// the parent's children (through matching children when recursing), in
// stream order, paged with the same tokens as /messages.
func (s *SyncAPI) relations(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	ctx := r.Context()
	vars := httputil.Vars(r)
	userID := s.userID(sess.Localpart)
	q := r.URL.Query()
	page := relationsPage{roomID: vars["roomId"], parentID: vars["eventId"], relType: vars["relType"], eventType: vars["eventType"],
		depth: 1, limit: defaultRelationsLimit, backwards: true}
	for _, v := range []string{page.roomID, page.parentID, page.relType, page.eventType} {
		if len(v) > maxIDLength {
			return httputil.InvalidParam("path parameter too long")
		}
	}
	switch q.Get("dir") {
	case "", "b":
	case "f":
		page.backwards = false
	default:
		return httputil.InvalidParam("dir must be b or f")
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return httputil.InvalidParam("limit must be a positive integer")
		}
		page.limit = min(n, maxRelationsLimit)
	}
	recurse, err := boolParam(q.Get("recurse"), "recurse")
	if err != nil {
		return err
	}
	if recurse {
		page.depth = relationsDepth
	}
	now, err := s.streamPos(ctx)
	if err != nil {
		return err
	}
	from, err := tokenParam(q.Get("from"), now, page.backwards)
	if err != nil {
		return err
	}
	to := int64(-1)
	if v := q.Get("to"); v != "" {
		t, err := ParseToken(v)
		if err != nil {
			return httputil.InvalidParam("to is not a token from this server")
		}
		to = t.PDU
	}
	if page.backwards {
		page.low, page.high = max(to, 0), from
	} else {
		page.low, page.high = from, now
		if to >= 0 {
			page.high = min(to, now)
		}
	}

	// Only a user who may see the parent may see its children (a 404, as
	// /event answers).
	parent, err := s.visibleEvent(ctx, page.roomID, page.parentID, userID)
	if err != nil {
		return err
	}
	if parent == nil {
		return httputil.NotFound("Event not found")
	}
	children, more, err := s.relationsPage(ctx, page)
	if err != nil {
		return err
	}
	cursor := page.high
	pdus := make([]gomatrixserverlib.PDU, len(children))
	for i, c := range children {
		pdus[i] = c.pdu
		if page.backwards {
			cursor = c.pos - 1
		} else {
			cursor = c.pos
		}
	}
	visible, err := s.rs.VisibleEvents(ctx, userID, pdus)
	if err != nil {
		return err
	}
	chunk, err := s.bundle(ctx, userID, sess.Localpart, visible, clientevent.Options{})
	if err != nil {
		return err
	}
	resp := map[string]any{"chunk": chunk}
	if more {
		resp["next_batch"] = Token{PDU: cursor}.String()
	}
	if v := q.Get("from"); v != "" {
		resp["prev_batch"] = v
	}
	if q.Has("recurse") {
		resp["recursion_depth"] = page.depth
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// visibleEvent loads a timeline event of a room if the user may see it,
// nil otherwise.
func (s *SyncAPI) visibleEvent(ctx context.Context, roomID, eventID, userID string) (gomatrixserverlib.PDU, error) {
	var version, js string
	err := s.db.Reader().QueryRowContext(ctx, `SELECT room_version, event_json FROM syncapi_events
		WHERE event_id = $1 AND room_id = $2 AND pos IS NOT NULL`, eventID, roomID).Scan(&version, &js)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	pdu, err := parseEvent(version, eventID, js)
	if err != nil {
		return nil, err
	}
	visible, err := s.rs.VisibleEvents(ctx, userID, []gomatrixserverlib.PDU{pdu})
	if err != nil || len(visible) == 0 {
		return nil, err
	}
	return pdu, nil
}

// relationsPage reads up to limit children in the window, and whether
// there are more. With depth > 1 the children of matching children are
// followed too (a recursive query), each level filtered alike, so an
// event reached only through a non-matching one is left out, as the spec
// says.
func (s *SyncAPI) relationsPage(ctx context.Context, p relationsPage) ([]storedEvent, bool, error) {
	args := []any{p.parentID, p.roomID}
	filters := ""
	if p.relType != "" {
		args = append(args, p.relType)
		filters += " AND r.rel_type = $" + strconv.Itoa(len(args))
	}
	if p.eventType != "" {
		args = append(args, p.eventType)
		filters += " AND r.child_type = $" + strconv.Itoa(len(args))
	}
	// Direct children come straight from the (parent_id, pos) index; the
	// recursive form has to gather the whole tree first.
	source := `syncapi_relations r`
	if p.depth > 1 {
		args = append(args, p.depth)
		source = `(WITH RECURSIVE tree (child_id, depth) AS (
			SELECT r.child_id, 1 FROM syncapi_relations r
			WHERE r.parent_id = $1 AND r.room_id = $2 AND NOT r.redacted` + filters + `
			UNION ALL
			SELECT r.child_id, t.depth + 1 FROM syncapi_relations r JOIN tree t ON r.parent_id = t.child_id
			WHERE t.depth < $` + strconv.Itoa(len(args)) + ` AND r.room_id = $2 AND NOT r.redacted` + filters + `
		) SELECT r.* FROM tree t JOIN syncapi_relations r ON r.child_id = t.child_id) r`
		filters = ""
	} else {
		filters = " AND r.parent_id = $1 AND r.room_id = $2 AND NOT r.redacted" + filters
	}
	args = append(args, p.low, p.high, p.limit+1)
	n := len(args)
	order := "ASC"
	if p.backwards {
		order = "DESC"
	}
	query := `SELECT r.pos, e.event_id, e.room_version, e.event_json FROM ` + source + `
	JOIN syncapi_events e ON e.event_id = r.child_id
	WHERE r.pos > $` + strconv.Itoa(n-2) + ` AND r.pos <= $` + strconv.Itoa(n-1) + filters + `
	ORDER BY r.pos ` + order + ` LIMIT $` + strconv.Itoa(n)
	rows, err := s.db.Reader().QueryContext(ctx, strings.TrimSpace(query), args...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	var out []storedEvent
	for rows.Next() {
		var ev storedEvent
		var eventID, version, js string
		if err := rows.Scan(&ev.pos, &eventID, &version, &js); err != nil {
			return nil, false, err
		}
		if ev.pdu, err = parseEvent(version, eventID, js); err != nil {
			return nil, false, err
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	if len(out) > p.limit {
		return out[:p.limit], true, nil
	}
	return out, false, nil
}
