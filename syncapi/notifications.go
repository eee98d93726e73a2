package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"strconv"

	"github.com/plexus-chat/plexus/internal/clientevent"
)

// GET /notifications pages back through the notifications push rules
// recorded for a user (push.go), newest first. Its token is the stream
// position of the last notification served.

const (
	sqlNotificationsPage = `SELECT n.pos, n.room_id, n.thread_id, n.actions, n.ts,
		e.event_id, e.room_version, e.event_json
		FROM syncapi_notifications n JOIN syncapi_events e ON e.event_id = n.event_id
		WHERE n.user_id = $1 AND n.pos < $2 AND (n.highlight OR $3 = 0) ORDER BY n.pos DESC LIMIT $4`
)

// notification is one entry of GET /notifications.
type notification struct {
	Actions json.RawMessage   `json:"actions"`
	Event   clientevent.Event `json:"event"`
	// ProfileTag is that of the rule that matched; rules have none here,
	// and it is sent as null (SyTest checks that it is present).
	ProfileTag *string `json:"profile_tag"`
	Read       bool    `json:"read"`
	RoomID     string  `json:"room_id"`
	TS         int64   `json:"ts"`
}

type notificationsPage struct {
	NextToken     string         `json:"next_token,omitempty"`
	Notifications []notification `json:"notifications"`
}

// Notifications answers GET /notifications for a user: before the
// position from (0 for the newest), at most limit, only highlights when
// onlyHighlight. It returns the response body.
func (s *SyncAPI) Notifications(ctx context.Context, userID string, from int64, limit int, onlyHighlight bool) (json.RawMessage, error) {
	if from <= 0 {
		from = 1 << 62
	}
	highlightOnly := 0
	if onlyHighlight {
		highlightOnly = 1
	}
	page := notificationsPage{Notifications: []notification{}}
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		marks, err := readPositions(ctx, tx, userID)
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, sqlNotificationsPage, userID, from, highlightOnly, limit+1)
		if err != nil {
			return err
		}
		defer rows.Close()
		var last int64
		for rows.Next() {
			if len(page.Notifications) == limit {
				page.NextToken = strconv.FormatInt(last, 10)
				break
			}
			var n notification
			var pos int64
			var thread, actions, eventID, version, js string
			if err := rows.Scan(&pos, &n.RoomID, &thread, &actions, &n.TS, &eventID, &version, &js); err != nil {
				return err
			}
			pdu, err := parseEvent(version, eventID, js)
			if err != nil {
				return err
			}
			n.Actions = json.RawMessage(actions)
			n.Event = clientevent.Format(pdu, clientevent.Options{OmitRoomID: true})
			n.Read = pos <= marks[n.RoomID].mark(thread)
			page.Notifications = append(page.Notifications, n)
			last = pos
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return json.Marshal(page)
}
