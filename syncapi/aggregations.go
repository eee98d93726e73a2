package syncapi

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/storage"
)

// Bundled aggregations (the spec's "Aggregations of child events"): every
// endpoint that serves room events adds unsigned.m.relations to the
// non-state events that have children: m.thread (latest reply, count,
// whether the user took part), m.replace (the latest valid edit) and
// m.reference (the referring event IDs). One response is aggregated with
// a few queries over all of its events, never one query per event.
// Children sent by users the requester ignores are left out.

// inBatch bounds the parameters of one IN (...) list.
const inBatch = 500

const (
	// Per thread and sender: how many replies and the newest one, so a
	// thread costs as many rows as it has distinct senders.
	sqlThreadSummaries = `SELECT parent_id, room_id, sender, COUNT(*), MAX(pos) FROM syncapi_relations
		WHERE rel_type = 'm.thread' AND NOT redacted AND parent_id IN (%s) GROUP BY parent_id, room_id, sender`
	sqlEventsByPos = `SELECT pos, event_id, room_version, event_json FROM syncapi_events WHERE pos IN (%s)`
	sqlEditsOf     = `SELECT r.parent_id, e.event_id, e.room_version, e.event_json FROM syncapi_relations r
		JOIN syncapi_events e ON e.event_id = r.child_id
		WHERE r.rel_type = 'm.replace' AND NOT r.redacted AND r.parent_id IN (%s)`
	sqlRepliesBefore = `SELECT e.event_id, e.room_version, e.event_json FROM syncapi_relations r
		JOIN syncapi_events e ON e.event_id = r.child_id
		WHERE r.parent_id = $1 AND r.room_id = $2 AND r.rel_type = 'm.thread' AND NOT r.redacted AND r.pos < $3
		ORDER BY r.pos DESC LIMIT $4`
	sqlReferencesOf = `SELECT parent_id, room_id, child_id, sender FROM syncapi_relations
		WHERE rel_type = 'm.reference' AND NOT redacted AND parent_id IN (%s) ORDER BY pos`
	// Which kinds of children the events have at all: most pages have
	// few, and the query of a kind none has is skipped.
	sqlRelTypesOf = `SELECT DISTINCT rel_type FROM syncapi_relations WHERE NOT redacted AND parent_id IN (%s)`
)

// aggregator computes the bundled aggregations of one response.
type aggregator struct {
	s       *SyncAPI
	q       storage.Querier
	userID  string
	ignored map[string]bool
	// opts format the events inside an aggregation as the response
	// formats its own (without room_id inside /sync).
	opts clientevent.Options
}

// threadSummary is an m.thread aggregation being built.
type threadSummary struct {
	count        int
	participated bool
	latestPos    int64
}

// aggregate returns the m.relations object of each event that has one.
// nested is how many more levels of events inside aggregations (a
// thread's latest reply) get their own aggregations.
func (a *aggregator) aggregate(ctx context.Context, events []gomatrixserverlib.PDU, nested int) (map[string]json.RawMessage, error) {
	parents := map[string]gomatrixserverlib.PDU{}
	var ids []any
	for _, ev := range events {
		if ev == nil || ev.StateKey() != nil { // state events get none, as the spec says
			continue
		}
		if _, dup := parents[ev.EventID()]; !dup {
			parents[ev.EventID()] = ev
			ids = append(ids, ev.EventID())
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	out := map[string]map[string]any{}
	set := func(id, relType string, v any) {
		if out[id] == nil {
			out[id] = map[string]any{}
		}
		out[id][relType] = v
	}

	kinds := map[string]bool{}
	err := a.queryIn(ctx, sqlRelTypesOf, ids, func(scan func(...any) error) error {
		var relType string
		err := scan(&relType)
		kinds[relType] = true
		return err
	})
	if err != nil || !(kinds[relThread] || kinds[relReplace] || kinds[relReference]) {
		return nil, err
	}
	var threads map[string]*threadSummary
	if kinds[relThread] {
		if threads, err = a.threads(ctx, parents, ids); err != nil {
			return nil, err
		}
	}
	var edits map[string]gomatrixserverlib.PDU
	if kinds[relReplace] {
		if edits, err = a.edits(ctx, parents, ids); err != nil {
			return nil, err
		}
	}
	// The events shown inside aggregations, loaded and checked against
	// history visibility together.
	var shown []gomatrixserverlib.PDU
	latest, err := a.eventsByPos(ctx, threads)
	if err != nil {
		return nil, err
	}
	for _, ev := range latest {
		shown = append(shown, ev)
	}
	for _, ev := range edits {
		shown = append(shown, ev)
	}
	visible := map[string]bool{}
	if len(shown) > 0 {
		ok, err := a.s.rs.VisibleEvents(ctx, a.userID, shown)
		if err != nil {
			return nil, err
		}
		for _, ev := range ok {
			visible[ev.EventID()] = true
		}
	}
	// A thread whose newest reply the user may not see (they left the
	// room since) shows the newest one they may.
	for root := range threads {
		if ev := latest[root]; ev != nil && !visible[ev.EventID()] {
			older, err := a.newestVisibleReply(ctx, parents[root], threads[root].latestPos)
			if err != nil {
				return nil, err
			}
			if older != nil {
				latest[root], visible[older.EventID()] = older, true
			}
		}
	}
	var latestShown []gomatrixserverlib.PDU
	for root := range threads {
		if ev := latest[root]; ev != nil && visible[ev.EventID()] {
			latestShown = append(latestShown, ev)
		}
	}
	var latestRelations map[string]json.RawMessage
	if nested > 0 && len(latestShown) > 0 {
		if latestRelations, err = a.aggregate(ctx, latestShown, nested-1); err != nil {
			return nil, err
		}
	}
	for root, t := range threads {
		ev := latest[root]
		if ev == nil || !visible[ev.EventID()] {
			continue // the newest reply is hidden from the user: no summary to show
		}
		formatted := clientevent.Format(ev, a.opts)
		attachRelations(&formatted, latestRelations[ev.EventID()])
		set(root, relThread, map[string]any{"latest_event": formatted, "count": t.count, "current_user_participated": t.participated})
	}
	for parent, ev := range edits {
		if visible[ev.EventID()] {
			set(parent, relReplace, clientevent.Format(ev, a.opts))
		}
	}
	var refs map[string][]map[string]string
	if kinds[relReference] {
		if refs, err = a.references(ctx, parents, ids); err != nil {
			return nil, err
		}
	}
	for parent, chunk := range refs {
		set(parent, relReference, map[string]any{"chunk": chunk})
	}

	result := make(map[string]json.RawMessage, len(out))
	for id, rels := range out {
		raw, err := json.Marshal(rels)
		if err != nil {
			return nil, err
		}
		result[id] = raw
	}
	return result, nil
}

// threads sums each thread's replies by sender, leaving out ignored ones.
func (a *aggregator) threads(ctx context.Context, parents map[string]gomatrixserverlib.PDU, ids []any) (map[string]*threadSummary, error) {
	out := map[string]*threadSummary{}
	err := a.queryIn(ctx, sqlThreadSummaries, ids, func(scan func(...any) error) error {
		var parent, roomID, sender string
		var count int
		var latest int64
		if err := scan(&parent, &roomID, &sender, &count, &latest); err != nil {
			return err
		}
		root := parents[parent]
		if root == nil || roomID != root.RoomID().String() || a.ignored[sender] {
			return nil
		}
		t := out[parent]
		if t == nil {
			t = &threadSummary{participated: string(root.SenderID()) == a.userID}
			out[parent] = t
		}
		t.count += count
		t.latestPos = max(t.latestPos, latest)
		t.participated = t.participated || sender == a.userID
		return nil
	})
	return out, err
}

// eventsByPos loads each thread's newest reply.
func (a *aggregator) eventsByPos(ctx context.Context, threads map[string]*threadSummary) (map[string]gomatrixserverlib.PDU, error) {
	rootOf := map[int64]string{}
	var positions []any
	for root, t := range threads {
		rootOf[t.latestPos] = root
		positions = append(positions, t.latestPos)
	}
	out := map[string]gomatrixserverlib.PDU{}
	err := a.queryIn(ctx, sqlEventsByPos, positions, func(scan func(...any) error) error {
		var pos int64
		var eventID, version, js string
		if err := scan(&pos, &eventID, &version, &js); err != nil {
			return err
		}
		pdu, err := parseEvent(version, eventID, js)
		if err != nil {
			return err
		}
		out[rootOf[pos]] = pdu
		return nil
	})
	return out, err
}

// hiddenReplyScan bounds how far back newestVisibleReply looks.
const hiddenReplyScan = 20

// newestVisibleReply is the newest reply of a thread before a position
// that the user may see and does not ignore, nil when the last few are
// all hidden.
func (a *aggregator) newestVisibleReply(ctx context.Context, root gomatrixserverlib.PDU, before int64) (gomatrixserverlib.PDU, error) {
	rows, err := a.q.QueryContext(ctx, sqlRepliesBefore, root.EventID(), root.RoomID().String(), before, hiddenReplyScan)
	if err != nil {
		return nil, err
	}
	var replies []gomatrixserverlib.PDU
	for rows.Next() {
		var eventID, version, js string
		if err := rows.Scan(&eventID, &version, &js); err != nil {
			rows.Close()
			return nil, err
		}
		if a.ignored[gjson.Get(js, "sender").String()] {
			continue
		}
		pdu, err := parseEvent(version, eventID, js)
		if err != nil {
			rows.Close()
			return nil, err
		}
		replies = append(replies, pdu)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(replies) == 0 {
		return nil, err
	}
	visible, err := a.s.rs.VisibleEvents(ctx, a.userID, replies)
	if err != nil || len(visible) == 0 {
		return nil, err
	}
	return visible[0], nil // VisibleEvents keeps the order: newest first
}

// edits picks each event's latest valid replacement (edits.go).
func (a *aggregator) edits(ctx context.Context, parents map[string]gomatrixserverlib.PDU, ids []any) (map[string]gomatrixserverlib.PDU, error) {
	candidates := map[string][]gomatrixserverlib.PDU{}
	err := a.queryIn(ctx, sqlEditsOf, ids, func(scan func(...any) error) error {
		var parent, eventID, version, js string
		if err := scan(&parent, &eventID, &version, &js); err != nil {
			return err
		}
		if a.ignored[gjson.Get(js, "sender").String()] {
			return nil
		}
		pdu, err := parseEvent(version, eventID, js)
		if err != nil {
			return err
		}
		candidates[parent] = append(candidates[parent], pdu)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := map[string]gomatrixserverlib.PDU{}
	for parent, cs := range candidates {
		if edit := latestEdit(parents[parent], cs); edit != nil {
			out[parent] = edit
		}
	}
	return out, nil
}

// references lists the events that refer to each event, oldest first.
func (a *aggregator) references(ctx context.Context, parents map[string]gomatrixserverlib.PDU, ids []any) (map[string][]map[string]string, error) {
	out := map[string][]map[string]string{}
	err := a.queryIn(ctx, sqlReferencesOf, ids, func(scan func(...any) error) error {
		var parent, roomID, child, sender string
		if err := scan(&parent, &roomID, &child, &sender); err != nil {
			return err
		}
		if p := parents[parent]; p == nil || p.RoomID().String() != roomID || a.ignored[sender] {
			return nil
		}
		out[parent] = append(out[parent], map[string]string{"event_id": child})
		return nil
	})
	return out, err
}

// queryIn runs a query whose %s is an IN list over args, in batches.
func (a *aggregator) queryIn(ctx context.Context, query string, args []any, row func(scan func(...any) error) error) error {
	for len(args) > 0 {
		n := min(len(args), inBatch)
		rows, err := a.q.QueryContext(ctx, strings.Replace(query, "%s", storage.Placeholders(1, n), 1), args[:n]...)
		if err != nil {
			return err
		}
		for rows.Next() {
			if err := row(rows.Scan); err != nil {
				rows.Close()
				return err
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		args = args[n:]
	}
	return nil
}

// attachRelations puts an aggregation into an event's unsigned data;
// events served raw (federation format, projected fields) are left alone.
func attachRelations(ev *clientevent.Event, relations json.RawMessage) {
	if len(relations) == 0 || ev.Raw != nil {
		return
	}
	unsigned := []byte(ev.Unsigned)
	if len(unsigned) == 0 {
		unsigned = []byte("{}")
	}
	if out, err := sjson.SetRawBytes(unsigned, `m\.relations`, relations); err == nil {
		ev.Unsigned = out
	}
}

// bundle formats events for a response with their aggregations.
func (s *SyncAPI) bundle(ctx context.Context, userID, localpart string, pdus []gomatrixserverlib.PDU, opts clientevent.Options) ([]clientevent.Event, error) {
	rels, err := s.relationsFor(ctx, s.db.Reader(), userID, localpart, pdus, clientevent.Options{OmitRoomID: opts.OmitRoomID})
	if err != nil {
		return nil, err
	}
	out := make([]clientevent.Event, len(pdus))
	for i, p := range pdus {
		out[i] = clientevent.Format(p, opts)
		attachRelations(&out[i], rels[p.EventID()])
	}
	return out, nil
}

// relationsFor aggregates events for a user, reading their ignore list.
func (s *SyncAPI) relationsFor(ctx context.Context, q storage.Querier, userID, localpart string, pdus []gomatrixserverlib.PDU, opts clientevent.Options) (map[string]json.RawMessage, error) {
	ignored, err := s.ignoredUsers(ctx, localpart)
	if err != nil {
		return nil, err
	}
	a := &aggregator{s: s, q: q, userID: userID, ignored: ignored, opts: opts}
	return a.aggregate(ctx, pdus, 1)
}

// BundleAggregations adds unsigned.m.relations to events other
// components serve (the client API's /rooms/{roomId}/event/{eventId}):
// events[i] is the client format of pdus[i].
func (s *SyncAPI) BundleAggregations(ctx context.Context, localpart string, pdus []gomatrixserverlib.PDU, events []clientevent.Event) error {
	rels, err := s.relationsFor(ctx, s.db.Reader(), s.userID(localpart), localpart, pdus, clientevent.Options{})
	if err != nil {
		return err
	}
	for i, p := range pdus {
		if i < len(events) {
			attachRelations(&events[i], rels[p.EventID()])
		}
	}
	return nil
}

// timelineEvent is a /sync timeline event as first formatted, and where.
type timelineEvent struct {
	pdu  gomatrixserverlib.PDU
	opts clientevent.Options
	slot *clientevent.Event
}

// bundleTimelines aggregates the timeline events of every room of a /sync
// in one pass, in the sync's read transaction, and formats again those
// that have aggregations (format attaches them before any projection).
func (b *builder) bundleTimelines(ctx context.Context) error {
	pdus := make([]gomatrixserverlib.PDU, len(b.timelineEvents))
	for i, ev := range b.timelineEvents {
		pdus[i] = ev.pdu
	}
	a := &aggregator{s: b.s, q: b.tx, userID: b.req.userID, ignored: b.ignored, opts: clientevent.Options{OmitRoomID: true}}
	var err error
	if b.relations, err = a.aggregate(ctx, pdus, 1); err != nil {
		return err
	}
	for _, ev := range b.timelineEvents {
		if _, ok := b.relations[ev.pdu.EventID()]; ok {
			*ev.slot = b.format(ev.pdu, ev.opts)
		}
	}
	return nil
}
