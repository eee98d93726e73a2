package syncapi

import (
	"context"
	"database/sql"
	"maps"
	"sync"
)

// unreadCache remembers, per user, room and read mark, the notification
// counts last taken up to a stream position, so that the next sync from
// the same read receipt counts only the notifications after that
// position: a user who never reads a busy room would otherwise have every
// sync count all of its unread notifications again. The sums are exact
// because notifications are only ever added, and all of those at or
// below a sync's position are committed before the sync reads it.
type unreadCache struct {
	mu      sync.Mutex
	entries map[unreadKey]unreadEntry
}

// unreadKey names one count: the by-thread grouping of a room after the
// unthreaded receipt (thread ""), or one thread after its own receipt.
type unreadKey struct{ user, room, thread string }

type unreadEntry struct {
	from, to int64
	byThread map[string]unreadCounts // never changed once stored
}

// unreadCacheMax bounds the cache; it starts afresh when full (a count
// missing from it is only taken in full once).
const unreadCacheMax = 100_000

func newUnreadCache() *unreadCache { return &unreadCache{entries: map[unreadKey]unreadEntry{}} }

// count returns the counts of key over (from, to], by thread, taking from
// the database only what the cache lacks. query counts over a range.
func (c *unreadCache) count(key unreadKey, from, to int64, query func(lo, hi int64) (map[string]unreadCounts, error)) (map[string]unreadCounts, error) {
	var base map[string]unreadCounts
	lo := from
	if c != nil {
		c.mu.Lock()
		e, ok := c.entries[key]
		c.mu.Unlock()
		if ok && e.from == from && e.to <= to {
			base, lo = e.byThread, e.to
		}
	}
	out := maps.Clone(base)
	if out == nil {
		out = map[string]unreadCounts{}
	}
	if lo < to {
		more, err := query(lo, to)
		if err != nil {
			return nil, err
		}
		for thread, n := range more {
			out[thread] = out[thread].add(n)
		}
	}
	if c != nil {
		c.mu.Lock()
		if len(c.entries) >= unreadCacheMax {
			clear(c.entries)
		}
		if e, ok := c.entries[key]; !ok || e.from != from || e.to <= to {
			c.entries[key] = unreadEntry{from: from, to: to, byThread: maps.Clone(out)}
		}
		c.mu.Unlock()
	}
	return out, nil
}

// byThread counts the user's notifications in the room in (lo, hi], by
// thread.
func (u unreadQuery) byThread(ctx context.Context, tx *sql.Tx) func(lo, hi int64) (map[string]unreadCounts, error) {
	return func(lo, hi int64) (map[string]unreadCounts, error) {
		rows, err := tx.QueryContext(ctx, sqlUnreadByThread, u.userID, u.roomID, lo, hi)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		out := map[string]unreadCounts{}
		for rows.Next() {
			var thread string
			var c unreadCounts
			if err := rows.Scan(&thread, &c.notifications, &c.highlights); err != nil {
				return nil, err
			}
			out[thread] = c
		}
		return out, rows.Err()
	}
}

// inThread counts the user's notifications in one thread of the room in
// (lo, hi].
func (u unreadQuery) inThread(ctx context.Context, tx *sql.Tx, thread string) func(lo, hi int64) (map[string]unreadCounts, error) {
	return func(lo, hi int64) (map[string]unreadCounts, error) {
		var c unreadCounts
		if err := tx.QueryRowContext(ctx, sqlUnreadInThread, u.userID, u.roomID, thread, lo, hi).
			Scan(&c.notifications, &c.highlights); err != nil {
			return nil, err
		}
		return map[string]unreadCounts{thread: c}, nil
	}
}
