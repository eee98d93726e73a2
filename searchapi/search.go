package searchapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Bounds on the work of one request.
const (
	candidateBatch = 50   // candidates read per query
	maxScanned     = 1000 // candidates looked at per request; beyond, next_batch continues
)

// candidate is an index match before the visibility check.
type candidate struct {
	eventID, roomID, sender, evType string
	pos                             int64
	score                           float64
}

// hit is a result the user may see.
type hit struct {
	candidate
	event *rsapi.Event
}

// indexWait bounds how long a search waits for the indexer.
const indexWait = 2 * time.Second

func (s *SearchAPI) search(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	data, err := httputil.ReadBody(r)
	if err != nil {
		return err
	}
	req, err := parseRequest(data, r.URL.Query().Get("next_batch"))
	if err != nil {
		return err
	}
	if req == nil {
		httputil.WriteJSON(w, http.StatusOK, map[string]any{"search_categories": map[string]any{}})
		return nil
	}
	ctx := r.Context()
	// A message a client has seen is found: wait (briefly) for the indexer
	// to reach what the roomserver had committed when the search came.
	if latest, err := s.rs.LatestPosition(ctx); err == nil {
		s.indexed.WaitFor(ctx, latest, indexWait)
	}
	userID := s.userID(sess.Localpart)
	rooms, err := s.roomScope(ctx, userID, req.filter)
	if err != nil {
		return err
	}
	var hits []hit
	next, count := "", 0
	if len(req.words) > 0 && len(rooms) > 0 {
		where, args := scopeSQL(req.keys, rooms, 2)
		args = append([]any{s.fts.matchArg(req.words)}, args...)
		if hits, next, err = s.find(ctx, userID, req, where, args); err != nil {
			return err
		}
		if count, err = s.count(ctx, where, args); err != nil {
			return err
		}
	}
	resp, err := s.respond(ctx, userID, req, hits, count)
	if err != nil {
		return err
	}
	if next != "" {
		resp["next_batch"] = next
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"search_categories": map[string]any{"room_events": resp}})
	return nil
}

// find reads candidates in the requested order from the request's offset
// and keeps those the user may see, until the page is full, the matches
// run out, or maxScanned candidates were looked at. next is the
// next_batch token, "" when no matches are left.
func (s *SearchAPI) find(ctx context.Context, userID string, req *request, where string, args []any) ([]hit, string, error) {
	order := " ORDER BY score DESC, d.pos DESC, d.id DESC"
	if req.byRecent {
		order = " ORDER BY d.pos DESC"
		if req.beforePos > 0 {
			args = append(args, req.beforePos)
			where += " AND d.pos < $" + strconv.Itoa(len(args))
		}
	}
	n := len(args)
	query := s.fts.matchSQL() + where + order + " LIMIT $" + strconv.Itoa(n+1) + " OFFSET $" + strconv.Itoa(n+2)
	offset, scanned, lastPos := req.offset, 0, int64(0)
	var hits []hit
	for len(hits) < req.limit && scanned < maxScanned {
		batch, err := s.candidates(ctx, query, append(args, candidateBatch, offset)...)
		if err != nil {
			return nil, "", err
		}
		visible, err := s.visible(ctx, userID, req, batch)
		if err != nil {
			return nil, "", err
		}
		taken := 0
		for _, c := range batch {
			taken++
			lastPos = c.pos
			if ev, ok := visible[c.eventID]; ok {
				hits = append(hits, hit{candidate: c, event: ev})
				if len(hits) == req.limit {
					break
				}
			}
		}
		offset += taken
		scanned += taken
		if len(batch) < candidateBatch && taken == len(batch) {
			return hits, "", nil // no more matches
		}
	}
	if req.byRecent {
		return hits, batchToken('p', lastPos), nil
	}
	return hits, batchToken('o', int64(offset)), nil
}

func (s *SearchAPI) candidates(ctx context.Context, query string, args ...any) ([]candidate, error) {
	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []candidate
	for rows.Next() {
		var c candidate
		var id int64
		if err := rows.Scan(&id, &c.eventID, &c.roomID, &c.sender, &c.evType, &c.pos, &c.score); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// visible returns the candidates that pass the filter's senders and types
// and that the history visibility rules let the user see, by event ID.
func (s *SearchAPI) visible(ctx context.Context, userID string, req *request, batch []candidate) (map[string]*rsapi.Event, error) {
	events := map[string]*rsapi.Event{}
	var pdus []gomatrixserverlib.PDU
	for _, c := range batch {
		if !matchesSendersAndTypes(req.filter, c.sender, c.evType) {
			continue
		}
		ev, err := s.rs.Event(ctx, c.eventID)
		if errors.Is(err, rsapi.ErrEventNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		events[c.eventID] = ev
		pdus = append(pdus, ev.PDU)
	}
	if len(pdus) == 0 {
		return nil, nil
	}
	seen, err := s.rs.VisibleEvents(ctx, userID, pdus)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*rsapi.Event, len(seen))
	for _, p := range seen {
		out[p.EventID()] = events[p.EventID()]
	}
	return out, nil
}

// count is the number of matches in the user's rooms up to when they
// left: the spec's approximate count (it includes events that history
// visibility hides, such as those from before a join).
func (s *SearchAPI) count(ctx context.Context, where string, args []any) (int, error) {
	var n int
	err := s.db.Reader().QueryRowContext(ctx, "SELECT COUNT(*) FROM ("+s.fts.matchSQL()+where+") AS matches", args...).Scan(&n)
	return n, err
}

// respond builds the room_events object: results with their context,
// groups, room state and highlights.
func (s *SearchAPI) respond(ctx context.Context, userID string, req *request, hits []hit, count int) (map[string]any, error) {
	results := make([]map[string]any, 0, len(hits))
	for _, h := range hits {
		res := map[string]any{"rank": h.score, "result": clientevent.Format(h.event.PDU, clientevent.Options{})}
		if req.context != nil {
			c, err := s.eventContext(ctx, userID, h, req.context)
			if err != nil {
				return nil, err
			}
			res["context"] = c
		}
		results = append(results, res)
	}
	highlights := []string{}
	seen := map[string]bool{}
	for _, w := range req.words {
		if !seen[w] {
			seen[w] = true
			highlights = append(highlights, w)
		}
	}
	resp := map[string]any{"results": results, "count": count, "highlights": highlights}
	if len(req.groupBy) > 0 {
		resp["groups"] = groups(req.groupBy, hits)
	}
	if req.withState {
		state, err := s.roomStates(ctx, userID, hits)
		if err != nil {
			return nil, err
		}
		resp["state"] = state
	}
	return resp, nil
}

// groups partitions the page's results by each requested key. Groups are
// ordered by their first result; paging is for the whole result list
// (the top-level next_batch), so groups carry no next_batch of their own.
func groups(keys []string, hits []hit) map[string]any {
	out := map[string]any{}
	for _, key := range keys {
		byValue := map[string]map[string]any{}
		for _, h := range hits {
			v := h.roomID
			if key == "sender" {
				v = h.sender
			}
			g, ok := byValue[v]
			if !ok {
				g = map[string]any{"order": len(byValue) + 1, "results": []string{}}
				byValue[v] = g
			}
			g["results"] = append(g["results"].([]string), h.eventID)
		}
		out[key] = byValue
	}
	return out
}
