package mediaapi

import (
	"sync"
	"time"
)

// uploadWaiters wakes downloads waiting for a pending upload's content.
// Entries are counted, so that IDs whose upload never comes (they expire)
// leave nothing behind once their waiters give up.
type uploadWaiters struct {
	mu      sync.Mutex
	waiting map[string]*waiter
}

type waiter struct {
	ch chan struct{}
	n  int
}

func newUploadWaiters() *uploadWaiters { return &uploadWaiters{waiting: map[string]*waiter{}} }

// wait returns a channel closed when id's content arrives, and a release
// to call when done waiting. Check the database after taking it, so that
// an upload in between is not missed.
func (u *uploadWaiters) wait(id string) (<-chan struct{}, func()) {
	u.mu.Lock()
	defer u.mu.Unlock()
	w, ok := u.waiting[id]
	if !ok {
		w = &waiter{ch: make(chan struct{})}
		u.waiting[id] = w
	}
	w.n++
	return w.ch, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		w.n--
		if w.n == 0 && u.waiting[id] == w {
			delete(u.waiting, id)
		}
	}
}

// done wakes everyone waiting for id.
func (u *uploadWaiters) done(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if w, ok := u.waiting[id]; ok {
		close(w.ch)
		delete(u.waiting, id)
	}
}

// flightGroup runs one call per key at a time; callers arriving while it
// runs get its result instead of starting their own.
type flightGroup struct {
	mu    sync.Mutex
	calls map[string]*flight
}

type flight struct {
	done chan struct{}
	val  any
	err  error
}

// do runs fn for key, or waits for the run in progress. shared reports
// whether the result came from another caller's run.
func (g *flightGroup) do(key string, fn func() (any, error)) (val any, err error, shared bool) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*flight{}
	}
	if f, ok := g.calls[key]; ok {
		g.mu.Unlock()
		<-f.done
		return f.val, f.err, true
	}
	f := &flight{done: make(chan struct{})}
	g.calls[key] = f
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(f.done)
	}()
	f.val, f.err = fn()
	return f.val, f.err, false
}

// missingCache remembers for a while which remote media its server said
// it does not have, so that repeated requests do not ask again each time.
type missingCache struct {
	ttl     time.Duration
	mu      sync.Mutex
	entries map[string]time.Time
}

// maxMissing bounds the cache; when full it starts over.
const maxMissing = 10000

func (c *missingCache) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxMissing {
		c.entries = map[string]time.Time{}
	}
	c.entries[key] = time.Now().Add(c.ttl)
}

func (c *missingCache) has(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.entries[key]
	if ok && time.Now().After(exp) {
		delete(c.entries, key)
		return false
	}
	return ok
}
