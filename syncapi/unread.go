package syncapi

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"strings"

	"github.com/tidwall/gjson"
)

// Unread counts, until push rules exist: a notification is a message,
// encrypted event or sticker from someone else after the user's read
// receipt, except edits and notices (as the default push rules
// .m.rule.suppress_edits and .m.rule.suppress_notices have it); it is a
// highlight when it mentions the user's ID or display name. Push rule
// evaluation will replace all of this.
const (
	unreadWhere = `room_id = $1 AND pos > $2 AND pos <= $3 AND sender <> $4
		AND type IN ('m.room.message', 'm.room.encrypted', 'm.sticker')
		AND event_json NOT LIKE '%"rel_type":"m.replace"%' AND event_json NOT LIKE '%"msgtype":"m.notice"%'`
	// $5 and $6 are the patterns of highlightPatterns.
	unreadHighlight = `CASE WHEN LOWER(event_json) LIKE $5 ESCAPE '!' OR LOWER(event_json) LIKE $6 ESCAPE '!' THEN 1 ELSE 0 END`

	sqlUnreadCounts = `SELECT COUNT(*), COALESCE(SUM(` + unreadHighlight + `), 0) FROM syncapi_events WHERE ` + unreadWhere
	// The unread events that may be in threads, newest first; at most
	// 1000 per room and sync, older ones count in the main timeline.
	sqlUnreadThreadEvents = `SELECT pos, event_json, ` + unreadHighlight + ` FROM syncapi_events WHERE ` + unreadWhere + `
		AND event_json LIKE '%"rel_type":"m.thread"%' ORDER BY pos DESC LIMIT 1000`
)

// readMarks is where the user's read receipts (m.read or m.read.private,
// whichever is further) stand in a room's stream.
type readMarks struct {
	unthreaded int64
	main       int64 // receipts with thread_id "main"
	threads    map[string]int64
}

// mainMark is where the main timeline is read up to.
func (m readMarks) mainMark() int64 { return max(m.unthreaded, m.main) }

// threadMark is where a thread is read up to.
func (m readMarks) threadMark(root string) int64 { return max(m.unthreaded, m.threads[root]) }

// readPositions loads the user's read marks in every room.
func readPositions(ctx context.Context, tx *sql.Tx, userID string) (map[string]readMarks, error) {
	rows, err := tx.QueryContext(ctx, sqlUserReadPositions, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]readMarks{}
	for rows.Next() {
		var roomID, threadID string
		var pos int64
		if err := rows.Scan(&roomID, &threadID, &pos); err != nil {
			return nil, err
		}
		m := out[roomID]
		switch threadID {
		case "":
			m.unthreaded = max(m.unthreaded, pos)
		case "main":
			m.main = max(m.main, pos)
		default:
			if m.threads == nil {
				m.threads = map[string]int64{}
			}
			m.threads[threadID] = max(m.threads[threadID], pos)
		}
		out[roomID] = m
	}
	return out, rows.Err()
}

type unreadCounts struct{ notifications, highlights int }

func (c unreadCounts) json() map[string]int {
	return map[string]int{"notification_count": c.notifications, "highlight_count": c.highlights}
}

// unreadQuery counts one room's unread notifications for a user, up to
// stream position to.
type unreadQuery struct {
	roomID, userID, displayName string
	marks                       readMarks
	to                          int64
}

// counts returns the room's counts and, when threads is set, the counts
// of each thread with unread notifications, the room's counts then being
// those of the main timeline only.
func (u unreadQuery) counts(ctx context.Context, tx *sql.Tx, threads bool) (unreadCounts, map[string]unreadCounts, error) {
	var c unreadCounts
	byUser, byName := highlightPatterns(u.userID, u.displayName)
	from := u.marks.mainMark()
	if err := tx.QueryRowContext(ctx, sqlUnreadCounts, u.roomID, from, u.to, u.userID, byUser, byName).
		Scan(&c.notifications, &c.highlights); err != nil {
		return c, nil, err
	}
	if !threads {
		return c, nil, nil
	}
	rows, err := tx.QueryContext(ctx, sqlUnreadThreadEvents, u.roomID, u.marks.unthreaded, u.to, u.userID, byUser, byName)
	if err != nil {
		return c, nil, err
	}
	defer rows.Close()
	perThread := map[string]unreadCounts{}
	for rows.Next() {
		var pos int64
		var js string
		var highlight int
		if err := rows.Scan(&pos, &js, &highlight); err != nil {
			return c, nil, err
		}
		rel := gjson.Get(js, `content.m\.relates_to`)
		root := rel.Get("event_id").String()
		if rel.Get("rel_type").String() != "m.thread" || root == "" {
			continue // a main timeline event that merely mentions threads
		}
		if pos > from { // counted above, but belongs to its thread
			c.notifications--
			c.highlights -= highlight
		}
		if pos > u.marks.threadMark(root) {
			t := perThread[root]
			t.notifications++
			t.highlights += highlight
			perThread[root] = t
		}
	}
	return c, perThread, rows.Err()
}

// highlightPatterns are the LIKE patterns, on the lower-cased event JSON,
// for a mention of the user: their ID anywhere in the event (the body,
// pills in formatted_body, m.mentions), or their display name in the
// content from the body on (in canonical JSON "body" is the content's
// first key and "depth" the key after the content). Without a display
// name both patterns are the ID's. SQLite lower-cases only ASCII, so
// other letters match case-sensitively there.
func highlightPatterns(userID, displayName string) (string, string) {
	byUser := "%" + likeEscape(strings.ToLower(userID)) + "%"
	name := strings.TrimSpace(displayName)
	if name == "" {
		return byUser, byUser
	}
	return byUser, `%"body":"%` + likeEscape(strings.ToLower(jsonStringBody(name))) + `%"depth":%`
}

// jsonStringBody is s as it appears inside a JSON string.
func jsonStringBody(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	out := strings.TrimSpace(b.String())
	return out[1 : len(out)-1]
}

// likeEscape makes s match literally in a LIKE pattern with ESCAPE '!'.
func likeEscape(s string) string {
	r := strings.NewReplacer("!", "!!", "%", "!%", "_", "!_")
	return r.Replace(s)
}
