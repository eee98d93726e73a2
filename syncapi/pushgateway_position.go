package syncapi

import (
	"context"
	"sort"
)

// The sender's position: every notification read is pending until each
// of its deliveries is finished (sent, rejected, given up); the stored
// position is just below the first still pending, so that a restart
// reads again exactly what might not have been delivered.

// pendingPush is a position read and how many of its deliveries are left.
type pendingPush struct {
	pos  int64
	left int
}

// queue records a position's deliveries as pending and hands them to their
// pushers' queues.
func (g *pushGateway) queue(pos int64, jobs []*pushJob) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.read = pos
	g.pending = append(g.pending, pendingPush{pos: pos, left: len(jobs)})
	g.inFlight += len(jobs)
	for _, j := range jobs {
		g.enqueueLocked(j)
	}
}

// finish marks one delivery of a position done (sent, rejected or given up).
func (g *pushGateway) finish(pos int64) {
	g.mu.Lock()
	i := sort.Search(len(g.pending), func(i int) bool { return g.pending[i].pos >= pos })
	if pos != badgePos && i < len(g.pending) && g.pending[i].pos == pos {
		g.pending[i].left--
	}
	g.inFlight--
	g.mu.Unlock()
	select {
	case g.progress <- struct{}{}:
	default:
	}
}

// persist stores the position below the first unfinished notification.
func (g *pushGateway) persist(ctx context.Context) {
	g.mu.Lock()
	var mark int64
	g.pending, mark = watermark(g.pending, g.read)
	changed := mark > g.stored
	g.mu.Unlock()
	if !changed {
		return
	}
	if _, err := g.db.Writer().ExecContext(ctx, sqlSetPushGatewayPos, mark); err != nil {
		if ctx.Err() == nil {
			g.log.WithError(err).Warn("cannot store the push gateway position")
		}
		return
	}
	g.mu.Lock()
	g.stored = max(g.stored, mark)
	g.mu.Unlock()
}

// watermark drops the finished positions at the front of pending and
// returns the rest with the position everything up to which is finished:
// just below the first unfinished one, or read when none is left.
func watermark(pending []pendingPush, read int64) ([]pendingPush, int64) {
	for len(pending) > 0 && pending[0].left <= 0 {
		pending = pending[1:]
	}
	if len(pending) > 0 {
		return pending, pending[0].pos - 1
	}
	return pending, read
}
