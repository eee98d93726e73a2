package mediaapi

import "sync"

// uploadWaiters wakes downloads waiting for a pending upload's content.
type uploadWaiters struct {
	mu    sync.Mutex
	chans map[string]chan struct{}
}

func newUploadWaiters() *uploadWaiters { return &uploadWaiters{chans: map[string]chan struct{}{}} }

// wait returns a channel closed when id's content arrives. Check the
// database after taking it, so that an upload in between is not missed.
func (u *uploadWaiters) wait(id string) <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	ch, ok := u.chans[id]
	if !ok {
		ch = make(chan struct{})
		u.chans[id] = ch
	}
	return ch
}

// done wakes everyone waiting for id.
func (u *uploadWaiters) done(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if ch, ok := u.chans[id]; ok {
		close(ch)
		delete(u.chans, id)
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
