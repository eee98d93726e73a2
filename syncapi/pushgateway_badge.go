package syncapi

import (
	"context"
	"database/sql"

	"github.com/plexus-chat/plexus/storage"
)

// Badge updates: when a user's read receipt moves, their unread count may
// fall, and their devices' badges should follow. The Push Gateway API
// allows a notification with counts only; one is sent to each http
// pusher when the count differs from the one last sent. These are not
// stored: after a restart the next receipt or push brings the count.

const (
	// maxBadgeUsers bounds the users waiting for a badge update, and the
	// counts remembered, in memory.
	maxBadgeUsers = 10000
	// badgePos marks a badge job, which has no stream position.
	badgePos = -1
)

// receiptMoved is called after a local user's receipt changed (receipts.go).
func (s *SyncAPI) receiptMoved(userID, receiptType string) {
	g := s.pushGateway()
	if g == nil || (receiptType != receiptRead && receiptType != receiptReadPrivate) {
		return
	}
	g.mu.Lock()
	if len(g.badgeUsers) < maxBadgeUsers {
		g.badgeUsers[userID] = storage.NowMillis()
	}
	g.mu.Unlock()
	g.wake()
}

// rememberBadge notes the count a user's devices were last sent.
func (g *pushGateway) rememberBadge(userID string, n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.lastBadge[userID]; !ok && len(g.lastBadge) >= maxBadgeUsers {
		g.lastBadge = map[string]int{}
	}
	g.lastBadge[userID] = n
}

// sendBadges queues the badge updates of the users whose receipts moved.
func (g *pushGateway) sendBadges(ctx context.Context) error {
	g.mu.Lock()
	users := g.badgeUsers
	g.badgeUsers = map[string]int64{}
	g.mu.Unlock()
	for userID, movedAt := range users {
		var keys []pusherKey
		var badge int
		err := g.db.ReadTx(ctx, func(tx *sql.Tx) error {
			var err error
			if keys, err = httpPushers(ctx, tx, userID, movedAt); err != nil || len(keys) == 0 {
				return err
			}
			marks, err := readPositions(ctx, tx, userID)
			if err != nil {
				return err
			}
			badge, err = badgeCount(ctx, tx, userID, marks)
			return err
		})
		if err != nil {
			g.mu.Lock() // tried again on the next round
			for u := range users {
				if _, ok := g.badgeUsers[u]; !ok && len(g.badgeUsers) < maxBadgeUsers {
					g.badgeUsers[u] = users[u]
				}
			}
			g.mu.Unlock()
			return err
		}
		if len(keys) == 0 {
			continue
		}
		g.mu.Lock()
		last, known := g.lastBadge[userID]
		g.mu.Unlock()
		if known && last == badge {
			continue
		}
		g.rememberBadge(userID, badge)
		// The count is sent even when zero: it is all the update says.
		body := map[string]any{"counts": map[string]any{"unread": badge}, "prio": "low"}
		jobs := make([]*pushJob, 0, len(keys))
		for _, k := range keys {
			jobs = append(jobs, &pushJob{pos: badgePos, key: k, deadline: g.now().Add(g.retryFor),
				full: body, eventIDOnly: body, tweaks: map[string]any{}})
		}
		g.mu.Lock()
		g.inFlight += len(jobs)
		for _, j := range jobs {
			g.enqueueLocked(j)
		}
		g.mu.Unlock()
	}
	return nil
}
