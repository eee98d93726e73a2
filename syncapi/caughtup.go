package syncapi

import (
	"context"
	"sync"
	"time"
)

// Read-your-writes for requests that make many events at once (room
// creation and upgrade): the client API waits, before it answers, until
// the sync API has stored every event the roomserver had committed, so a
// /sync right after the answer shows the whole room rather than its first
// events. The consumer stores events a moment after they commit; other
// writes do not wait (a client waiting for its own message syncs until it
// comes).

// caughtUpWait bounds the wait: a consumer that is behind for long (a
// burst, a database hiccup) must not hold the request.
const caughtUpWait = 2 * time.Second

// progress wakes those waiting for the consumer to reach a position.
type progress struct {
	mu sync.Mutex
	ch chan struct{} // closed and replaced when the consumer moves on
}

func (p *progress) changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch == nil {
		p.ch = make(chan struct{})
	}
	return p.ch
}

func (p *progress) advance() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch != nil {
		close(p.ch)
		p.ch = nil
	}
}

// CaughtUp returns once the sync API has stored every room event the
// roomserver has committed so far, the context ends or caughtUpWait
// passes.
func (s *SyncAPI) CaughtUp(ctx context.Context) {
	target, err := s.rs.LatestPosition(ctx)
	if err != nil {
		return
	}
	timer := time.NewTimer(caughtUpWait)
	defer timer.Stop()
	for {
		ch := s.consumer.progress.changed()
		if s.consumer.pos.Load() >= target {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		}
	}
}
