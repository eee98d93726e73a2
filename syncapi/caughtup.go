package syncapi

import (
	"context"
	"time"
)

// Read-your-writes for requests that make many events at once (room
// creation, upgrade, a join through another server): the client API waits, before it answers, until
// the sync API has stored every event the roomserver had committed, so a
// /sync right after the answer shows the whole room rather than its first
// events. The consumer stores events a moment after they commit; other
// writes do not wait (a client waiting for its own message syncs until it
// comes).

// caughtUpWait bounds the wait: a consumer that is behind for long (a
// burst, a database hiccup) must not hold the request.
const caughtUpWait = 2 * time.Second

// CaughtUp returns once the sync API has stored every room event the
// roomserver has committed so far, the context ends or caughtUpWait
// passes.
func (s *SyncAPI) CaughtUp(ctx context.Context) {
	target, err := s.rs.LatestPosition(ctx)
	if err != nil {
		return
	}
	s.consumer.progress.WaitFor(ctx, target, caughtUpWait)
}
