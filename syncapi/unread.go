package syncapi

import (
	"context"
	"database/sql"
)

// Unread counts are the notifications push rules recorded for the user
// (push.go) after their read receipts: m.read or m.read.private, whichever
// is further, per thread when the receipts are threaded. A notification
// is a highlight when its rule set the highlight tweak.
const (
	// The user's notifications in a room after a position, by thread.
	sqlUnreadByThread = `SELECT thread_id, COUNT(*), COALESCE(SUM(CASE WHEN highlight THEN 1 ELSE 0 END), 0)
		FROM syncapi_notifications WHERE user_id = $1 AND room_id = $2 AND pos > $3 AND pos <= $4 GROUP BY thread_id`
	// One thread's, for a thread read further than the unthreaded receipt.
	sqlUnreadInThread = `SELECT COUNT(*), COALESCE(SUM(CASE WHEN highlight THEN 1 ELSE 0 END), 0)
		FROM syncapi_notifications WHERE user_id = $1 AND room_id = $2 AND thread_id = $3 AND pos > $4 AND pos <= $5`
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

// mark is where a notification's thread ("main" or a root) is read up to.
func (m readMarks) mark(thread string) int64 {
	if thread == mainThread {
		return m.mainMark()
	}
	return m.threadMark(thread)
}

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

func (c unreadCounts) add(o unreadCounts) unreadCounts {
	return unreadCounts{c.notifications + o.notifications, c.highlights + o.highlights}
}

// unreadQuery counts one room's unread notifications for a user, up to
// stream position to. cache, when set, keeps the counts between syncs
// (unreadcache.go).
type unreadQuery struct {
	roomID, userID string
	marks          readMarks
	to             int64
	cache          *unreadCache
}

// counts returns the room's counts and, when threads is set, the counts
// of each thread with unread notifications, the room's counts then being
// those of the main timeline only. Without threads, the room's counts
// are the sum over the main timeline and the threads, each after its own
// receipt.
func (u unreadQuery) counts(ctx context.Context, tx *sql.Tx, threads bool) (unreadCounts, map[string]unreadCounts, error) {
	var main unreadCounts
	from := u.marks.unthreaded
	byThread, err := u.cache.count(unreadKey{u.userID, u.roomID, ""}, from, u.to, u.byThread(ctx, tx))
	if err != nil {
		return main, nil, err
	}
	// A thread (or the main timeline) read further than the unthreaded
	// receipt is counted again from its own receipt.
	for thread := range byThread {
		mark := u.marks.mark(thread)
		if mark <= from {
			continue
		}
		again, err := u.cache.count(unreadKey{u.userID, u.roomID, thread}, mark, u.to, u.inThread(ctx, tx, thread))
		if err != nil {
			return main, nil, err
		}
		if c := again[thread]; c.notifications == 0 {
			delete(byThread, thread)
		} else {
			byThread[thread] = c
		}
	}
	main = byThread[mainThread]
	delete(byThread, mainThread)
	if !threads {
		for _, c := range byThread {
			main = main.add(c)
		}
		return main, nil, nil
	}
	return main, byThread, nil
}
