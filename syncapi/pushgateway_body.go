package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
)

// The body of a push (the Push Gateway API's notification): the event's
// fields, the user's unread count, the action's tweaks. It is built when
// the notification is dispatched; the device part is added at each
// attempt from the pusher as it is then.

const (
	// A pusher gets what happened from its creation on, not before.
	sqlHTTPPushers = `SELECT app_id, pushkey FROM syncapi_pushers WHERE user_id = $1 AND kind = 'http' AND created_ts <= $2`
	// The user's notifications after each joined room's unthreaded read
	// receipt, by room and thread (unread.go counts one room the same way).
	sqlBadgeByRoom = `SELECT n.room_id, n.thread_id, COUNT(*) FROM syncapi_notifications n
		JOIN syncapi_current_state m ON m.room_id = n.room_id AND m.type = 'm.room.member' AND m.state_key = n.user_id
			AND m.membership = 'join'
		LEFT JOIN (SELECT r.room_id, MAX(e.pos) AS pos FROM syncapi_receipts r JOIN syncapi_events e ON e.event_id = r.event_id
			WHERE r.user_id = $1 AND r.thread_id = '' AND r.receipt_type IN ('m.read', 'm.read.private') GROUP BY r.room_id) rd
			ON rd.room_id = n.room_id
		WHERE n.user_id = $1 AND n.pos > COALESCE(rd.pos, 0)
		GROUP BY n.room_id, n.thread_id`
)

// pushEventInfo is what a push says of an event, read once per event.
type pushEventInfo struct {
	json                                   string
	evType, sender, stateKey               string
	isState                                bool
	roomName, roomAlias, senderDisplayName string
	content                                json.RawMessage
}

// pushJob is one notification for one pusher.
type pushJob struct {
	pos               int64
	key               pusherKey
	eventID           string
	roomID, threadID  string
	deadline          time.Time
	full, eventIDOnly map[string]any
	tweaks            map[string]any
}

// pusherKey names a pusher.
type pusherKey struct{ userID, appID, pushKey string }

// prepare builds the deliveries of one notification: none when the user
// has no http pusher, sent the event, or has read past it already.
func (g *pushGateway) prepare(ctx context.Context, n pushNotification, events map[string]*pushEventInfo) ([]*pushJob, error) {
	actions := gjson.Parse(n.actions)
	if !hasNotify(actions) {
		return nil, nil
	}
	deadline := time.UnixMilli(n.ts).Add(g.retryFor)
	if g.now().After(deadline) {
		return nil, nil // recorded too long ago (the server was down): stale
	}
	var keys []pusherKey
	var badge int
	err := g.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		if keys, err = httpPushers(ctx, tx, n.userID, n.ts); err != nil || len(keys) == 0 {
			return err
		}
		marks, err := readPositions(ctx, tx, n.userID)
		if err != nil {
			return err
		}
		if marks[n.roomID].mark(n.threadID) >= n.pos {
			keys = nil // read already
			return nil
		}
		badge, err = badgeCount(ctx, tx, n.userID, marks)
		return err
	})
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	ev := events[n.eventID]
	if ev == nil {
		if ev, err = g.eventInfo(ctx, n.roomID, n.eventID); err != nil {
			return nil, err
		}
		events[n.eventID] = ev
	}
	if ev == nil || ev.sender == n.userID {
		return nil, nil
	}
	g.rememberBadge(n.userID, badge)
	tweaks := tweaksOf(actions)
	counts := map[string]any{}
	if badge > 0 {
		counts["unread"] = badge // zero counts are left out
	}
	full := map[string]any{
		"event_id": n.eventID, "room_id": n.roomID, "type": ev.evType, "sender": ev.sender,
		"prio": prioOf(n, ev, tweaks), "counts": counts,
	}
	if ev.content != nil {
		full["content"] = ev.content
	}
	if ev.senderDisplayName != "" {
		full["sender_display_name"] = ev.senderDisplayName
	}
	if ev.roomName != "" {
		full["room_name"] = ev.roomName
	}
	if ev.roomAlias != "" {
		full["room_alias"] = ev.roomAlias
	}
	if ev.evType == spec.MRoomMember && ev.isState {
		full["user_is_target"] = ev.stateKey == n.userID
		// Not in the spec's body, but sent by Synapse and read by
		// gateways and SyTest: the membership, at the top level.
		full["membership"] = gjson.Get(ev.json, "content.membership").String()
	}
	// "id" is the event ID under its name before r0 of the API; Synapse
	// still sends it and SyTest requires it.
	full["id"] = n.eventID
	idOnly := map[string]any{"event_id": n.eventID, "room_id": n.roomID, "counts": counts, "prio": full["prio"]}
	jobs := make([]*pushJob, 0, len(keys))
	for _, k := range keys {
		jobs = append(jobs, &pushJob{pos: n.pos, key: k, eventID: n.eventID, roomID: n.roomID, threadID: n.threadID, deadline: deadline,
			full: full, eventIDOnly: idOnly, tweaks: tweaks})
	}
	return jobs, nil
}

// readAlready says whether the user has read past a notification.
func (g *pushGateway) readAlready(ctx context.Context, userID, roomID, threadID string, pos int64) (bool, error) {
	var read bool
	err := g.db.ReadTx(ctx, func(tx *sql.Tx) error {
		marks, err := readPositions(ctx, tx, userID)
		read = err == nil && marks[roomID].mark(threadID) >= pos
		return err
	})
	return read, err
}

// httpPushers lists the user's http pushers set up at or before at (ms).
func httpPushers(ctx context.Context, tx *sql.Tx, userID string, at int64) ([]pusherKey, error) {
	rows, err := tx.QueryContext(ctx, sqlHTTPPushers, userID, at)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys []pusherKey
	for rows.Next() {
		k := pusherKey{userID: userID}
		if err := rows.Scan(&k.appID, &k.pushKey); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// eventInfo reads an event and the room's name, alias and the sender's
// display name; nil when the event is unknown.
func (g *pushGateway) eventInfo(ctx context.Context, roomID, eventID string) (*pushEventInfo, error) {
	ev := &pushEventInfo{}
	err := g.db.ReadTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, sqlEventJSONByID, eventID).Scan(&ev.json); err != nil {
			return err
		}
		e := gjson.Parse(ev.json)
		ev.evType, ev.sender = e.Get("type").String(), e.Get("sender").String()
		if sk := e.Get("state_key"); sk.Exists() {
			ev.isState, ev.stateKey = true, sk.String()
		}
		if c := e.Get("content"); c.IsObject() {
			ev.content = json.RawMessage(c.Raw)
		}
		state := func(evType, stateKey, path string) (string, error) {
			var version, js string
			err := tx.QueryRowContext(ctx, sqlCurrentStateEvent, roomID, evType, stateKey).Scan(&version, &js)
			if errors.Is(err, sql.ErrNoRows) {
				return "", nil
			}
			return gjson.Get(js, path).String(), err
		}
		var err error
		if ev.roomName, err = state(spec.MRoomName, "", "content.name"); err != nil {
			return err
		}
		if ev.roomAlias, err = state(spec.MRoomCanonicalAlias, "", "content.alias"); err != nil {
			return err
		}
		if ev.senderDisplayName, err = state(spec.MRoomMember, ev.sender, "content.displayname"); err != nil {
			return err
		}
		// An invite from another server into a room this server is not in
		// carries the room's state for the invitee.
		e.Get("unsigned.invite_room_state").ForEach(func(_, st gjson.Result) bool {
			switch t, sk := st.Get("type").String(), st.Get("state_key").String(); {
			case t == spec.MRoomName && ev.roomName == "":
				ev.roomName = st.Get("content.name").String()
			case t == spec.MRoomCanonicalAlias && ev.roomAlias == "":
				ev.roomAlias = st.Get("content.alias").String()
			case t == spec.MRoomMember && sk == ev.sender && ev.senderDisplayName == "":
				ev.senderDisplayName = st.Get("content.displayname").String()
			}
			return true
		})
		// The name shown is the room's display name as far as the name
		// and alias go (SyTest expects the alias when there is no name).
		if ev.roomName == "" {
			ev.roomName = ev.roomAlias
		}
		return nil
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return ev, err
}

// badgeCount is the user's unread notifications over their joined rooms,
// each room counted as /sync counts it (unread.go): from the unthreaded
// receipt, and from a thread's own receipt where that is further.
func badgeCount(ctx context.Context, tx *sql.Tx, userID string, marks map[string]readMarks) (int, error) {
	type group struct {
		roomID, thread string
		n              int
	}
	rows, err := tx.QueryContext(ctx, sqlBadgeByRoom, userID)
	if err != nil {
		return 0, err
	}
	var groups []group
	for rows.Next() {
		var g group
		if err := rows.Scan(&g.roomID, &g.thread, &g.n); err != nil {
			rows.Close()
			return 0, err
		}
		groups = append(groups, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	total := 0
	for _, g := range groups {
		m := marks[g.roomID]
		if mark := m.mark(g.thread); mark > m.unthreaded {
			var highlights int
			if err := tx.QueryRowContext(ctx, sqlUnreadInThread, userID, g.roomID, g.thread, mark, int64(1)<<62).
				Scan(&g.n, &highlights); err != nil {
				return 0, err
			}
		}
		total += g.n
	}
	return total, nil
}

func hasNotify(actions gjson.Result) bool {
	found := false
	actions.ForEach(func(_, a gjson.Result) bool {
		found = a.Type == gjson.String && a.Str == "notify"
		return !found
	})
	return found
}

// tweaksOf collects the set_tweak actions; a tweak without a value is
// true (the spec's default for highlight).
func tweaksOf(actions gjson.Result) map[string]any {
	tweaks := map[string]any{}
	actions.ForEach(func(_, a gjson.Result) bool {
		name := a.Get("set_tweak")
		if name.Type != gjson.String || name.Str == "" {
			return true
		}
		if v := a.Get("value"); v.Exists() {
			tweaks[name.Str] = json.RawMessage(v.Raw)
		} else {
			tweaks[name.Str] = true
		}
		return true
	})
	return tweaks
}

// prioOf is high for what a person waits for (highlights, notifications
// with a sound, messages, calls, invites of the user) and low for the
// rest, which a gateway may deliver when convenient.
func prioOf(n pushNotification, ev *pushEventInfo, tweaks map[string]any) string {
	if n.highlight {
		return "high"
	}
	if _, ok := tweaks["sound"]; ok {
		return "high"
	}
	switch ev.evType {
	case "m.room.message", "m.room.encrypted", "m.call.invite", "m.sticker":
		return "high"
	case spec.MRoomMember:
		if ev.stateKey == n.userID && gjson.Get(ev.json, "content.membership").String() == spec.Invite {
			return "high"
		}
	}
	return "low"
}
