package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/eventfilter"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/pducache"
)

const (
	defaultTimelineLimit = 10
	maxTimelineLimit     = 100
	maxTimeout           = 5 * time.Minute
)

// syncRequest is a parsed /sync request.
type syncRequest struct {
	userID, localpart, deviceID string
	since                       *Token
	timeout                     time.Duration
	fullState                   bool
	useStateAfter               bool
	setPresence                 string // "", online, offline or unavailable
	filter                      *eventfilter.Filter
}

// sync answers /sync unless it is a long-poll with nothing to answer yet:
// that it returns, for syncHandler to wait on (longpoll.go).
func (s *SyncAPI) sync(w http.ResponseWriter, r *http.Request, sess *accounts.Session) (*heldSync, error) {
	req, err := s.parseRequest(r, sess)
	if err != nil {
		return nil, err
	}
	// Listen before looking, so that news arriving meanwhile wakes us.
	wake := s.notifier.listen(req.userID)
	resp, err := s.buildResponse(r.Context(), req)
	if err != nil {
		return nil, err
	}
	if req.since != nil && req.timeout > 0 && !req.fullState && resp.empty() {
		// Hold the empty answer encoded (a few hundred bytes) rather than
		// as the response's maps and slices: thousands of clients wait.
		empty, err := json.Marshal(resp)
		if err != nil {
			return nil, err
		}
		return &heldSync{req: req, wake: wake, empty: empty}, nil
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil, nil
}

func (s *SyncAPI) parseRequest(r *http.Request, sess *accounts.Session) (*syncRequest, error) {
	q := r.URL.Query()
	req := &syncRequest{userID: s.userID(sess.Localpart), localpart: sess.Localpart, deviceID: sess.DeviceID}
	if v := q.Get("since"); v != "" {
		t, err := ParseToken(v)
		if err != nil {
			return nil, httputil.InvalidParam("since is not a sync token from this server")
		}
		req.since = &t
	}
	if v := q.Get("timeout"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, httputil.InvalidParam("timeout must be a non-negative number of milliseconds")
		}
		req.timeout = min(time.Duration(ms)*time.Millisecond, maxTimeout)
	}
	var err error
	if req.fullState, err = boolParam(q.Get("full_state"), "full_state"); err != nil {
		return nil, err
	}
	if req.useStateAfter, err = boolParam(q.Get("use_state_after"), "use_state_after"); err != nil {
		return nil, err
	}
	switch p := q.Get("set_presence"); p {
	case "", "online", "offline", "unavailable":
		req.setPresence = p
	default:
		return nil, httputil.InvalidParam("set_presence must be online, offline or unavailable")
	}
	if req.filter, err = s.loadFilter(r.Context(), sess.Localpart, q.Get("filter")); err != nil {
		return nil, err
	}
	return req, nil
}

func boolParam(v, name string) (bool, error) {
	switch v {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, httputil.InvalidParam("%s must be true or false", name)
}

// loadFilter reads the filter parameter: a stored filter's ID, or a filter
// given inline as JSON.
func (s *SyncAPI) loadFilter(ctx context.Context, localpart, param string) (*eventfilter.Filter, error) {
	if param == "" {
		return &eventfilter.Filter{}, nil
	}
	raw := []byte(param)
	if !strings.HasPrefix(strings.TrimSpace(param), "{") {
		stored, err := s.accounts.Filter(ctx, localpart, param)
		if errors.Is(err, accounts.ErrNotFound) {
			return nil, httputil.NotFound("No filter with ID %q", param)
		}
		if err != nil {
			return nil, err
		}
		raw = stored
	}
	f, err := eventfilter.Parse(raw)
	if err != nil {
		return nil, httputil.BadJSON("filter: %v", err)
	}
	return f, nil
}

// syncResponse is the /sync answer.
type syncResponse struct {
	NextBatch   string         `json:"next_batch"`
	AccountData eventList      `json:"account_data"`
	Presence    eventList      `json:"presence"`
	ToDevice    eventList      `json:"to_device"`
	DeviceLists deviceLists    `json:"device_lists"`
	OTKCounts   map[string]int `json:"device_one_time_keys_count"`
	Fallback    []string       `json:"device_unused_fallback_key_types"`
	Rooms       roomsResponse  `json:"rooms"`
}

type eventList struct {
	Events []any `json:"events"`
}

type deviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

type roomsResponse struct {
	Join   map[string]*joinedRoom  `json:"join"`
	Invite map[string]*invitedRoom `json:"invite"`
	Leave  map[string]*leftRoom    `json:"leave"`
	Knock  map[string]*knockedRoom `json:"knock"`
}

type timeline struct {
	Events    []clientevent.Event `json:"events"`
	Limited   bool                `json:"limited"`
	PrevBatch string              `json:"prev_batch"`
}

type stateList struct {
	Events []clientevent.Event `json:"events"`
}

type joinedRoom struct {
	Summary     map[string]any `json:"summary"`
	State       *stateList     `json:"state,omitempty"`
	StateAfter  *stateList     `json:"state_after,omitempty"`
	Timeline    timeline       `json:"timeline"`
	Ephemeral   eventList      `json:"ephemeral"`
	AccountData eventList      `json:"account_data"`
	Unread      map[string]int `json:"unread_notifications"`

	UnreadThreads map[string]map[string]int `json:"unread_thread_notifications,omitempty"` // set in ephemeral.go
}

type invitedRoom struct {
	InviteState eventList `json:"invite_state"`
}

type knockedRoom struct {
	KnockState eventList `json:"knock_state"`
}

type leftRoom struct {
	State       *stateList `json:"state,omitempty"`
	StateAfter  *stateList `json:"state_after,omitempty"`
	Timeline    timeline   `json:"timeline"`
	AccountData eventList  `json:"account_data"`
}

func (r *syncResponse) empty() bool {
	return len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0 &&
		len(r.Rooms.Knock) == 0 && len(r.AccountData.Events) == 0 && len(r.ToDevice.Events) == 0 &&
		len(r.Presence.Events) == 0 &&
		// device list changes are news too (keys.go); key counts are not
		len(r.DeviceLists.Changed) == 0 && len(r.DeviceLists.Left) == 0
}

// buildResponse assembles the answer from one consistent snapshot of the
// sync API's tables.
func (s *SyncAPI) buildResponse(ctx context.Context, req *syncRequest) (*syncResponse, error) {
	resp := &syncResponse{
		AccountData: eventList{Events: []any{}}, Presence: eventList{Events: []any{}}, ToDevice: eventList{Events: []any{}},
		DeviceLists: deviceLists{Changed: []string{}, Left: []string{}}, OTKCounts: map[string]int{}, Fallback: []string{},
		Rooms: roomsResponse{Join: map[string]*joinedRoom{}, Invite: map[string]*invitedRoom{}, Leave: map[string]*leftRoom{}, Knock: map[string]*knockedRoom{}},
	}
	var since Token
	if req.since != nil {
		since = *req.since
	}
	var next Token
	if req.since != nil {
		next = since // streams not yet served keep their position
	}
	entries, adPos, err := s.accounts.AccountDataSince(ctx, req.localpart, since.AccountData)
	if err != nil {
		return nil, err
	}
	next.AccountData = adPos
	roomData := map[string][]any{}
	for _, e := range entries {
		ev := map[string]any{"type": e.Type, "content": json.RawMessage(e.Content)}
		if e.RoomID == "" {
			if req.filter.AccountData == nil || matchesEventFilter(req.filter.AccountData, e.Type, "") {
				resp.AccountData.Events = append(resp.AccountData.Events, ev)
			}
		} else {
			roomData[e.RoomID] = append(roomData[e.RoomID], ev)
		}
	}

	// The rooms the user is joined to as of next.PDU, listed once by the
	// rooms part for the ephemeral and device list parts.
	joined := map[string]bool{}
	lazy := newLazySent(req.userID, req.deviceID)
	ignored, err := s.ignoredUsers(ctx, req.localpart)
	if err != nil {
		return nil, err
	}
	err = s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var now int64
		if err := tx.QueryRowContext(ctx, sqlConsumerPos, consumerName).Scan(&now); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		next.PDU = now
		b := &builder{s: s, tx: tx, req: req, since: since.PDU, now: now, initial: req.since == nil, lazy: lazy, ignored: ignored,
			joined: joined}
		if err := b.rooms(ctx, resp, roomData); err != nil {
			return err
		}
		return b.bundleTimelines(ctx) // aggregations.go: one pass over every timeline
	})
	if err != nil {
		return nil, err
	}
	if err := lazy.save(ctx, s); err != nil {
		return nil, err
	}
	// The streams beside the room events: each fills its part of resp and
	// moves its position in next.
	if err := s.syncEphemeral(ctx, req, since, &next, resp, joined); err != nil {
		return nil, err
	}
	if err := s.syncDeviceMessaging(ctx, req, since, &next, resp); err != nil {
		return nil, err
	}
	// End-to-end encryption (keys.go): device_lists, one-time key counts,
	// unused fallback key types; moves next.DeviceList.
	if err := s.syncKeys(ctx, req, since, &next, resp, joined); err != nil {
		return nil, err
	}
	resp.NextBatch = next.String()
	return resp, nil
}

// builder computes the rooms part of one sync in one read transaction.
type builder struct {
	// joined collects the rooms the user is joined to as of now.
	joined map[string]bool
	lazy   *lazySent
	// ignored are the senders the user ignores (m.ignored_user_list).
	ignored map[string]bool
	s       *SyncAPI
	tx      *sql.Tx
	req     *syncRequest
	since   int64 // PDU position the client has seen (0 when initial)
	now     int64 // PDU position this sync goes up to
	initial bool
	// timelineEvents are the timeline events served, for their bundled
	// aggregations (aggregations.go), computed once all rooms are built.
	timelineEvents []timelineEvent
	relations      map[string]json.RawMessage
}

type membershipRow struct {
	roomID, membership, eventID string
	pos                         int64
}

func (b *builder) rooms(ctx context.Context, resp *syncResponse, roomData map[string][]any) error {
	rows, err := b.tx.QueryContext(ctx, sqlUserMemberships, b.req.userID)
	if err != nil {
		return err
	}
	var memberships []membershipRow
	for rows.Next() {
		var m membershipRow
		if err := rows.Scan(&m.roomID, &m.membership, &m.eventID, &m.pos); err != nil {
			rows.Close()
			return err
		}
		memberships = append(memberships, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	roomFilter := b.req.filter.Room
	for _, m := range memberships {
		if m.pos > b.now {
			continue // arrived after our snapshot's position; the next sync gets it
		}
		if m.membership == spec.Join {
			b.joined[m.roomID] = true
		}
		if roomFilter != nil && !matchesRooms(roomFilter.Rooms, roomFilter.NotRooms, m.roomID) {
			continue
		}
		changed := m.pos > b.since
		switch m.membership {
		case spec.Join:
			if quiet, err := b.quietRoom(ctx, m.roomID, changed, roomData); err != nil || quiet {
				if err != nil {
					return err
				}
				continue // roompositions.go: nothing new, nothing to look up
			}
			newlyJoined := false
			if !b.initial && changed {
				prev, err := b.membershipAt(ctx, m.roomID, b.since)
				if err != nil {
					return err
				}
				newlyJoined = prev != spec.Join
				if !newlyJoined {
					// Left and came back within the window: the client
					// dropped the room, so it needs the whole of it again.
					if newlyJoined, err = b.leftDuring(ctx, m.roomID); err != nil {
						return err
					}
				}
			}
			jr, err := b.joinedRoom(ctx, m.roomID, b.initial || b.req.fullState || newlyJoined, roomData[m.roomID])
			if err != nil {
				return err
			}
			if jr != nil {
				resp.Rooms.Join[m.roomID] = jr
			}
		case spec.Invite:
			if b.initial || changed {
				var inviter string
				if err := b.tx.QueryRowContext(ctx, `SELECT sender FROM syncapi_events WHERE event_id = $1`, m.eventID).Scan(&inviter); err != nil && !errors.Is(err, sql.ErrNoRows) {
					return err
				}
				if b.ignored[inviter] {
					continue // invites from ignored users are not shown
				}
				ir, err := b.invitedRoom(ctx, m.roomID)
				if err != nil {
					return err
				}
				resp.Rooms.Invite[m.roomID] = ir
			}
		case spec.Knock:
			if b.initial || changed {
				kr, err := b.strippedState(ctx, m.roomID)
				if err != nil {
					return err
				}
				resp.Rooms.Knock[m.roomID] = &knockedRoom{KnockState: kr}
			}
		case spec.Leave, spec.Ban:
			includeLeave := roomFilter != nil && roomFilter.IncludeLeave
			if (changed && !b.initial) || (b.initial && includeLeave) || (b.req.fullState && includeLeave) {
				prev := ""
				if !b.initial {
					if prev, err = b.membershipAt(ctx, m.roomID, b.since); err != nil {
						return err
					}
				}
				// A rejected invite or a leave of a room never seen needs no history.
				lr, err := b.leftRoom(ctx, m.roomID, m.pos, prev)
				if err != nil {
					return err
				}
				resp.Rooms.Leave[m.roomID] = lr
			}
		}
	}
	return nil
}

// leftDuring reports whether the user's membership was something other
// than join at some point in the sync window.
func (b *builder) leftDuring(ctx context.Context, roomID string) (bool, error) {
	var one int
	err := b.tx.QueryRowContext(ctx, `SELECT 1 FROM syncapi_events WHERE room_id = $1 AND type = 'm.room.member'
		AND state_key = $2 AND pos > $3 AND pos <= $4 AND membership <> 'join' LIMIT 1`,
		roomID, b.req.userID, b.since, b.now).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// membershipAt is the user's membership of a room as of a position.
func (b *builder) membershipAt(ctx context.Context, roomID string, pos int64) (string, error) {
	var m sql.NullString
	err := b.tx.QueryRowContext(ctx, `SELECT membership FROM syncapi_events
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 AND pos <= $3 ORDER BY pos DESC LIMIT 1`,
		roomID, b.req.userID, pos).Scan(&m)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return m.String, err
}

// joinedRoom builds a joined room's entry, nil when nothing changed in an
// incremental sync.
func (b *builder) joinedRoom(ctx context.Context, roomID string, full bool, accountData []any) (*joinedRoom, error) {
	from := b.since
	if full {
		from = 0
	}
	tl, start, hidden, err := b.timeline(ctx, roomID, from, b.now, full)
	if err != nil {
		return nil, err
	}
	var stateEvents []clientevent.Event
	if full {
		stateEvents, err = b.fullState(ctx, roomID, b.stateAnchor(start, b.now), tl.Events)
		if err == nil {
			stateEvents, err = b.withHiddenState(ctx, roomID, b.now, hidden, stateEvents)
		}
	} else {
		stateEvents, err = b.stateDelta(ctx, roomID, b.since, b.stateAnchor(start, b.now))
	}
	if err != nil {
		return nil, err
	}
	if !full && len(tl.Events) == 0 && len(stateEvents) == 0 && len(accountData) == 0 {
		return nil, nil
	}
	if !full && b.lazyLoading() {
		if stateEvents, err = b.lazyMembers(ctx, roomID, start, tl.Events, stateEvents); err != nil {
			return nil, err
		}
	}
	if b.lazyLoading() {
		// Member events the device gets in any form are ones it has.
		for _, list := range [][]clientevent.Event{tl.Events, stateEvents} {
			for _, ev := range list {
				if ev.Type == spec.MRoomMember && ev.StateKey != nil {
					b.lazy.add(roomID, *ev.StateKey)
				}
			}
		}
	}
	jr := &joinedRoom{
		Timeline:    tl,
		Ephemeral:   eventList{Events: []any{}},
		AccountData: eventList{Events: orEmpty(accountData)},
		Unread:      map[string]int{"notification_count": 0, "highlight_count": 0},
	}
	b.setState(&jr.State, &jr.StateAfter, stateEvents)
	// The summary changes only with the room's state; the spec lets an
	// incremental sync leave out what has not changed since the last.
	changed := true
	if !full && !b.initial {
		latest, err := b.s.consumer.latest.latestState(ctx, b.tx, roomID)
		if err != nil {
			return nil, err
		}
		changed = latest > b.since
	}
	if changed {
		if jr.Summary, err = b.summary(ctx, roomID); err != nil {
			return nil, err
		}
	} else {
		jr.Summary = map[string]any{}
	}
	return jr, nil
}

func orEmpty(a []any) []any {
	if a == nil {
		return []any{}
	}
	return a
}

// stateAnchor is where the state section stands: the start of the
// timeline, or its end when the client asked for state_after.
func (b *builder) stateAnchor(timelineStart, timelineEnd int64) int64 {
	if b.req.useStateAfter {
		return timelineEnd
	}
	return timelineStart
}

func (b *builder) setState(state, stateAfter **stateList, events []clientevent.Event) {
	if events == nil {
		events = []clientevent.Event{}
	}
	if b.req.useStateAfter {
		*stateAfter = &stateList{Events: events}
	} else {
		*state = &stateList{Events: events}
	}
}

// leftRoom builds the entry of a room the user left (or was kicked or
// banned from) during the window: the history up to the leave.
func (b *builder) leftRoom(ctx context.Context, roomID string, leavePos int64, prev string) (*leftRoom, error) {
	from := b.since
	if b.initial || prev != spec.Join {
		from = leavePos - 1
	}
	tl, start, _, err := b.timeline(ctx, roomID, from, leavePos, true)
	if err != nil {
		return nil, err
	}
	var stateEvents []clientevent.Event
	if b.initial || b.req.fullState || prev != spec.Join {
		stateEvents, err = b.fullState(ctx, roomID, b.stateAnchor(start, leavePos), tl.Events)
	} else {
		stateEvents, err = b.stateDelta(ctx, roomID, b.since, b.stateAnchor(start, leavePos))
	}
	if err != nil {
		return nil, err
	}
	lr := &leftRoom{Timeline: tl, AccountData: eventList{Events: []any{}}}
	b.setState(&lr.State, &lr.StateAfter, stateEvents)
	return lr, nil
}

// timeline returns the newest events of a room in (from, to] that pass
// the timeline filter, at most the limit, and the position just before
// the first one returned.
func (b *builder) timeline(ctx context.Context, roomID string, from, to int64, checkVisibility bool) (timeline, int64, []storedEvent, error) {
	filter := b.timelineFilter()
	limit := defaultTimelineLimit
	if filter != nil && filter.Limit > 0 {
		limit = min(filter.Limit, maxTimelineLimit)
	}
	var picked []storedEvent
	cursor := to
	limited := false
	for {
		batch, err := b.eventsDesc(ctx, roomID, from, cursor, limit+1)
		if err != nil {
			return timeline{}, 0, nil, err
		}
		for _, ev := range batch {
			cursor = ev.pos - 1
			if filter != nil && !matchesRoomEventFilter(filter, ev.pdu) {
				continue
			}
			if b.ignored[string(ev.pdu.SenderID())] && ev.pdu.StateKey() == nil { // state stays (spec)
				continue
			}
			if len(picked) == limit {
				limited = true
				break
			}
			picked = append(picked, ev)
		}
		if limited || len(batch) < limit+1 {
			break
		}
	}
	slices.Reverse(picked)
	var hidden []storedEvent
	if checkVisibility && len(picked) > 0 {
		// A user new to the room sees its history only as its history
		// visibility allows.
		visible, err := b.visible(ctx, picked)
		if err != nil {
			return timeline{}, 0, nil, err
		}
		kept := make(map[string]bool, len(visible))
		for _, ev := range visible {
			kept[ev.pdu.EventID()] = true
		}
		for _, ev := range picked {
			if !kept[ev.pdu.EventID()] && ev.pdu.StateKey() != nil {
				hidden = append(hidden, ev)
			}
		}
		picked = visible
	}
	start := to
	if len(picked) > 0 {
		start = picked[0].pos - 1
	} else if limited {
		start = cursor
	}
	events := make([]clientevent.Event, len(picked))
	for i, ev := range picked {
		opts := clientevent.Options{OmitRoomID: true}
		if ev.deviceID == b.req.deviceID && ev.pdu.SenderID() == spec.SenderID(b.req.userID) {
			opts.TxnID = ev.txnID
		}
		events[i] = b.format(ev.pdu, opts)
		b.timelineEvents = append(b.timelineEvents, timelineEvent{ev.pdu, opts, &events[i]})
	}
	// prev_batch pages back from the timeline's start, except in an
	// initial sync whose timeline holds the whole room: there it is the
	// window's end, as other servers do (SyTest relies on paging back from
	// an initial sync's prev_batch returning events; clients drop the ones
	// they have).
	prevBatch := start
	if !limited && from == 0 {
		prevBatch = to
	}
	return timeline{Events: events, Limited: limited, PrevBatch: Token{PDU: prevBatch}.String()}, start, hidden, nil
}

// withHiddenState adds to a full state the state events the timeline hid
// from the user (history visibility) that are still current at position
// to: the user may not see when they happened, but must know the room as
// it is now (a member who joined while the user was away).
func (b *builder) withHiddenState(ctx context.Context, roomID string, to int64, hidden []storedEvent, stateEvents []clientevent.Event) ([]clientevent.Event, error) {
	if len(hidden) == 0 {
		return stateEvents, nil
	}
	current, err := b.stateAt(ctx, roomID, to)
	if err != nil {
		return nil, err
	}
	isCurrent := make(map[string]bool, len(current))
	for _, id := range current {
		isCurrent[id] = true
	}
	for _, h := range hidden {
		if !isCurrent[h.pdu.EventID()] {
			continue
		}
		ev := b.format(h.pdu, clientevent.Options{OmitRoomID: true})
		replaced := false
		for i, s := range stateEvents {
			if s.Type == ev.Type && s.StateKey != nil && ev.StateKey != nil && *s.StateKey == *ev.StateKey {
				stateEvents[i], replaced = ev, true
			}
		}
		if !replaced {
			stateEvents = append(stateEvents, ev)
		}
	}
	return stateEvents, nil
}

// format serves an event as the filter asks: client or federation
// format, and only the event_fields it names.
func (b *builder) format(pdu gomatrixserverlib.PDU, opts clientevent.Options) clientevent.Event {
	ev := clientevent.Format(pdu, opts)
	attachRelations(&ev, b.relations[pdu.EventID()])
	if b.req.filter.EventFormat == eventfilter.EventFormatFederation {
		ev.Raw = json.RawMessage(pdu.JSON())
		return ev
	}
	if len(b.req.filter.EventFields) > 0 {
		ev = clientevent.Project(ev, b.req.filter.EventFields)
	}
	return ev
}

// visible keeps the events the user may see by history visibility.
func (b *builder) visible(ctx context.Context, events []storedEvent) ([]storedEvent, error) {
	pdus := make([]gomatrixserverlib.PDU, len(events))
	byID := make(map[string]storedEvent, len(events))
	for i, ev := range events {
		pdus[i] = ev.pdu
		byID[ev.pdu.EventID()] = ev
	}
	ok, err := b.s.rs.VisibleEvents(ctx, b.req.userID, pdus)
	if err != nil {
		return nil, err
	}
	out := make([]storedEvent, 0, len(ok))
	for _, p := range ok {
		out = append(out, byID[p.EventID()])
	}
	return out, nil
}

func (b *builder) lazyLoading() bool {
	return b.req.filter.Room != nil && b.req.filter.Room.State != nil && b.req.filter.Room.State.LazyLoadMembers
}

func (b *builder) timelineFilter() *eventfilter.RoomEventFilter {
	if b.req.filter.Room == nil {
		return nil
	}
	return b.req.filter.Room.Timeline
}

type storedEvent struct {
	pos             int64
	pdu             gomatrixserverlib.PDU
	txnID, deviceID string
}

func (b *builder) eventsDesc(ctx context.Context, roomID string, from, to int64, limit int) ([]storedEvent, error) {
	return queryEvents(ctx, b.tx, sqlRoomEventsDesc, roomID, from, to, limit)
}

func queryEvents(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query, roomID string, from, to int64, limit int) ([]storedEvent, error) {
	rows, err := q.QueryContext(ctx, query, roomID, from, to, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storedEvent
	for rows.Next() {
		var ev storedEvent
		var eventID, version, js string
		if err := rows.Scan(&ev.pos, &eventID, &version, &js, &ev.txnID, &ev.deviceID); err != nil {
			return nil, err
		}
		if ev.pdu, err = parseEvent(version, eventID, js); err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}

func parseEvent(version, eventID, js string) (gomatrixserverlib.PDU, error) {
	redacted := gjson.Get(js, "unsigned.redacted_because").Exists()
	return parsedEvents.Parse(version, eventID, js, redacted)
}

// parsedEvents keeps parsed stored events (internal/pducache): syncs and
// history pages read the same recent events again and again.
var parsedEvents = pducache.New(8192)

type stateKeyTuple struct{ typ, key string }

// stateAt is the room's state as of position p: the current state with
// the changes made after p undone, newest first.
func (b *builder) stateAt(ctx context.Context, roomID string, p int64) (map[stateKeyTuple]string, error) {
	state := map[stateKeyTuple]string{}
	rows, err := b.tx.QueryContext(ctx, sqlCurrentState, roomID)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var k stateKeyTuple
		var id string
		if err := rows.Scan(&k.typ, &k.key, &id); err != nil {
			rows.Close()
			return nil, err
		}
		state[k] = id
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	changes, err := b.stateChanges(ctx, roomID, p, 1<<62)
	if err != nil {
		return nil, err
	}
	for _, c := range changes { // newest first
		for _, id := range c.adds {
			if k, ok := c.keys[id]; ok && state[k] == id {
				delete(state, k)
			}
		}
		for _, id := range c.removes {
			if k, ok := c.keys[id]; ok {
				state[k] = id
			}
		}
	}
	return state, nil
}

type stateChange struct {
	adds, removes []string
	keys          map[string]stateKeyTuple
}

// stateChanges lists the room's state changes in (from, to], newest first,
// with the state keys of the events they name.
func (b *builder) stateChanges(ctx context.Context, roomID string, from, to int64) ([]stateChange, error) {
	rows, err := b.tx.QueryContext(ctx, sqlStateChangesDesc, roomID, from, to)
	if err != nil {
		return nil, err
	}
	var changes []stateChange
	ids := map[string]bool{}
	for rows.Next() {
		var pos int64
		var adds, removes string
		if err := rows.Scan(&pos, &adds, &removes); err != nil {
			rows.Close()
			return nil, err
		}
		var c stateChange
		_ = json.Unmarshal([]byte(adds), &c.adds)
		_ = json.Unmarshal([]byte(removes), &c.removes)
		for _, id := range append(slices.Clone(c.adds), c.removes...) {
			ids[id] = true
		}
		changes = append(changes, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	keys, err := b.eventKeys(ctx, ids)
	if err != nil {
		return nil, err
	}
	for i := range changes {
		changes[i].keys = keys
	}
	return changes, nil
}

func (b *builder) eventKeys(ctx context.Context, ids map[string]bool) (map[string]stateKeyTuple, error) {
	keys := make(map[string]stateKeyTuple, len(ids))
	for id := range ids {
		var k stateKeyTuple
		var sk sql.NullString
		err := b.tx.QueryRowContext(ctx, sqlEventKeys, id).Scan(new(string), &k.typ, &sk)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if sk.Valid {
			k.key = sk.String
			keys[id] = k
		}
	}
	return keys, nil
}

// fullState is the whole state at position p, minus members the client
// lazy-loads and does not need for these timeline events.
func (b *builder) fullState(ctx context.Context, roomID string, p int64, tl []clientevent.Event) ([]clientevent.Event, error) {
	state, err := b.stateAt(ctx, roomID, p)
	if err != nil {
		return nil, err
	}
	var stateFilter *eventfilter.RoomEventFilter
	if b.req.filter.Room != nil {
		stateFilter = b.req.filter.Room.State
	}
	if stateFilter != nil && stateFilter.LazyLoadMembers {
		// A full state resets what the device has: it gets every member it
		// needs, redundant or not.
		needed := b.timelineSenders(tl)
		for k := range state {
			if k.typ == spec.MRoomMember && !needed[k.key] {
				delete(state, k)
			}
		}
		b.lazy.reset(roomID, needed)
	}
	return b.loadState(ctx, state, stateFilter, tl)
}

// timelineSenders are the members a lazy-loading client needs for these
// events: their senders, and the user themself.
func (b *builder) timelineSenders(tl []clientevent.Event) map[string]bool {
	needed := map[string]bool{b.req.userID: true}
	for _, ev := range tl {
		needed[ev.Sender] = true
	}
	return needed
}

// lazyMembers adds to an incremental sync's state the member events of
// timeline senders the device has not been sent yet (or all of them, with
// include_redundant_members), as they stood at the timeline's start.
func (b *builder) lazyMembers(ctx context.Context, roomID string, at int64, tl []clientevent.Event, stateEvents []clientevent.Event) ([]clientevent.Event, error) {
	filter := b.req.filter.Room.State
	have := map[string]bool{}
	for _, ev := range stateEvents {
		if ev.Type == spec.MRoomMember && ev.StateKey != nil {
			have[*ev.StateKey] = true
		}
	}
	for _, ev := range tl {
		if ev.Type == spec.MRoomMember && ev.StateKey != nil {
			have[*ev.StateKey] = true
		}
	}
	var want []string
	for member := range b.timelineSenders(tl) {
		if have[member] {
			continue
		}
		sent, err := b.lazy.sent(ctx, b.tx, roomID, member)
		if err != nil {
			return nil, err
		}
		if !sent || filter.IncludeRedundantMembers {
			want = append(want, member)
		}
	}
	if len(want) == 0 {
		return stateEvents, nil
	}
	state, err := b.stateAt(ctx, roomID, at)
	if err != nil {
		return nil, err
	}
	picked := map[stateKeyTuple]string{}
	for _, m := range want {
		k := stateKeyTuple{spec.MRoomMember, m}
		if id, ok := state[k]; ok {
			picked[k] = id
		}
		b.lazy.add(roomID, m)
	}
	extra, err := b.loadState(ctx, picked, nil, tl)
	if err != nil {
		return nil, err
	}
	return append(stateEvents, extra...), nil
}

// stateDelta is the state at position to, for the keys that changed in
// (from, to].
func (b *builder) stateDelta(ctx context.Context, roomID string, from, to int64) ([]clientevent.Event, error) {
	if to <= from {
		return nil, nil
	}
	changes, err := b.stateChanges(ctx, roomID, from, to)
	if err != nil || len(changes) == 0 {
		return nil, err
	}
	changed := map[stateKeyTuple]bool{}
	for _, c := range changes {
		for _, id := range append(slices.Clone(c.adds), c.removes...) {
			if k, ok := c.keys[id]; ok {
				changed[k] = true
			}
		}
	}
	state, err := b.stateAt(ctx, roomID, to)
	if err != nil {
		return nil, err
	}
	for k := range state {
		if !changed[k] {
			delete(state, k)
		}
	}
	var stateFilter *eventfilter.RoomEventFilter
	if b.req.filter.Room != nil {
		stateFilter = b.req.filter.Room.State
	}
	return b.loadState(ctx, state, stateFilter, nil)
}

// loadState loads state events by ID in a stable order, skipping those in
// the timeline (clients get them there) and those the filter drops.
func (b *builder) loadState(ctx context.Context, state map[stateKeyTuple]string, filter *eventfilter.RoomEventFilter, tl []clientevent.Event) ([]clientevent.Event, error) {
	inTimeline := map[string]bool{}
	for _, ev := range tl {
		inTimeline[ev.EventID] = true
	}
	keys := make([]stateKeyTuple, 0, len(state))
	for k := range state {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].typ != keys[j].typ {
			return keys[i].typ < keys[j].typ
		}
		return keys[i].key < keys[j].key
	})
	out := []clientevent.Event{}
	for _, k := range keys {
		id := state[k]
		if inTimeline[id] {
			continue
		}
		pdu, err := b.event(ctx, id)
		if err != nil {
			return nil, err
		}
		if pdu == nil || (filter != nil && !matchesRoomEventFilter(filter, pdu)) {
			continue
		}
		out = append(out, b.format(pdu, clientevent.Options{OmitRoomID: true}))
	}
	return out, nil
}

func (b *builder) event(ctx context.Context, eventID string) (gomatrixserverlib.PDU, error) {
	var version, js string
	err := b.tx.QueryRowContext(ctx, sqlEventByID, eventID).Scan(&version, &js)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseEvent(version, eventID, js)
}

// summary counts members and names heroes from the current state.
func (b *builder) summary(ctx context.Context, roomID string) (map[string]any, error) {
	rows, err := b.tx.QueryContext(ctx, `SELECT state_key, membership FROM syncapi_current_state
		WHERE room_id = $1 AND type = 'm.room.member'`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	joined, invited := 0, 0
	var heroes, others []string
	for rows.Next() {
		var user string
		var membership sql.NullString
		if err := rows.Scan(&user, &membership); err != nil {
			return nil, err
		}
		switch membership.String {
		case spec.Join:
			joined++
		case spec.Invite:
			invited++
		}
		if user == b.req.userID {
			continue
		}
		if membership.String == spec.Join || membership.String == spec.Invite {
			heroes = append(heroes, user)
		} else {
			others = append(others, user)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(heroes) == 0 {
		heroes = others
	}
	sort.Strings(heroes)
	if len(heroes) > 5 {
		heroes = heroes[:5]
	}
	summary := map[string]any{"m.joined_member_count": joined, "m.invited_member_count": invited}
	named, err := b.hasName(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if !named {
		// Heroes name rooms that have neither a name nor an alias.
		if heroes == nil {
			heroes = []string{}
		}
		summary["m.heroes"] = heroes
	}
	return summary, nil
}

// hasName reports whether the room has a non-empty name or canonical alias.
func (b *builder) hasName(ctx context.Context, roomID string) (bool, error) {
	for _, k := range []struct{ typ, field string }{{"m.room.name", "name"}, {"m.room.canonical_alias", "alias"}} {
		var version, js string
		err := b.tx.QueryRowContext(ctx, sqlCurrentStateEvent, roomID, k.typ, "").Scan(&version, &js)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return false, err
		}
		if gjson.Get(js, "content."+k.field).String() != "" {
			return true, nil
		}
	}
	return false, nil
}

// strippedStateTypes are shared with users invited to or knocking on a
// room, so they can see what it is.
var strippedStateTypes = []string{"m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
	"m.room.canonical_alias", "m.room.encryption", "m.room.topic"}

func (b *builder) invitedRoom(ctx context.Context, roomID string) (*invitedRoom, error) {
	events, err := b.strippedState(ctx, roomID)
	if err != nil {
		return nil, err
	}
	return &invitedRoom{InviteState: events}, nil
}

// strippedState is the room's stripped state plus the user's own
// membership event.
func (b *builder) strippedState(ctx context.Context, roomID string) (eventList, error) {
	// An invite or knock through another server brings the room's
	// stripped state with it (remotestate.go).
	if remote, ok, err := b.remoteStrippedState(ctx, roomID); ok || err != nil {
		return remote, err
	}
	out := eventList{Events: []any{}}
	keys := make([]stateKeyTuple, 0, len(strippedStateTypes)+1)
	for _, t := range strippedStateTypes {
		keys = append(keys, stateKeyTuple{t, ""})
	}
	keys = append(keys, stateKeyTuple{spec.MRoomMember, b.req.userID})
	for _, k := range keys {
		var version, js string
		err := b.tx.QueryRowContext(ctx, sqlCurrentStateEvent, roomID, k.typ, k.key).Scan(&version, &js)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return out, err
		}
		ev := gjson.Parse(js)
		stripped := map[string]any{
			"type": ev.Get("type").String(), "state_key": ev.Get("state_key").String(),
			"sender": ev.Get("sender").String(), "content": json.RawMessage(ev.Get("content").Raw),
		}
		if k.typ == spec.MRoomMember {
			// The invite itself is served whole, so clients can show who invited them and when.
			stripped["event_id"] = gjson.Get(js, "event_id").String()
			stripped["origin_server_ts"] = ev.Get("origin_server_ts").Int()
		}
		out.Events = append(out.Events, stripped)
	}
	return out, nil
}
