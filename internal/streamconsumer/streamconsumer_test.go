package streamconsumer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// fakeStream holds positions 1..n and wakes waiters when more are added.
type fakeStream struct {
	mu   sync.Mutex
	n    int64
	wake chan struct{}
}

func newFakeStream() *fakeStream { return &fakeStream{wake: make(chan struct{})} }

func (f *fakeStream) add(k int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n += int64(k)
	close(f.wake)
	f.wake = make(chan struct{})
}

func (f *fakeStream) OutputSince(_ context.Context, pos int64, limit int) ([]rsapi.OutputEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []rsapi.OutputEvent
	for p := pos + 1; p <= f.n && len(out) < limit; p++ {
		out = append(out, rsapi.OutputEvent{Position: p})
	}
	return out, nil
}

func (f *fakeStream) Notify(pos int64) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n > pos {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return f.wake
}

// The loop starts after the given position, hands over batches in
// order, retries a failed batch, and waits for new entries.
func TestRunResumesRetriesAndWaits(t *testing.T) {
	stream := newFakeStream()
	stream.add(250)
	var mu sync.Mutex
	var got []int64
	failOnce := true
	handle := func(_ context.Context, batch []rsapi.OutputEvent) error {
		mu.Lock()
		defer mu.Unlock()
		if len(batch) > BatchSize {
			t.Errorf("batch of %d", len(batch))
		}
		if failOnce && batch[0].Position > 100 {
			failOnce = false
			return errors.New("transient")
		}
		for _, o := range batch {
			got = append(got, o.Position)
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Run(ctx, stream, 40, handle, logrus.NewEntry(logrus.New()), nil)
		close(done)
	}()
	waitFor := func(n int) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			l := len(got)
			mu.Unlock()
			if l == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("consumed %d, want %d", l, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(210) // 41..250, with one retried batch
	stream.add(5)
	waitFor(215)
	cancel()
	<-done
	for i, p := range got {
		if p != int64(41+i) {
			t.Fatalf("position %d at %d: not in order once each", p, i)
		}
	}
}

// After a wake Run lets entries gather for Gather before it reads them:
// a burst arrives as one batch, later than the wake.
func TestRunGathersAfterAWake(t *testing.T) {
	stream := newFakeStream()
	batches := make(chan []rsapi.OutputEvent, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Run(ctx, stream, 0, func(_ context.Context, b []rsapi.OutputEvent) error {
		batches <- b
		return nil
	}, logrus.NewEntry(logrus.New()), nil)
	time.Sleep(20 * time.Millisecond) // let Run find the stream empty and wait
	woke := time.Now()
	stream.add(1)
	stream.add(4)
	select {
	case b := <-batches:
		if waited := time.Since(woke); waited < Gather {
			t.Fatalf("read %v after the wake, before Gather (%v)", waited, Gather)
		}
		if len(b) != 5 {
			t.Fatalf("a burst of 5 came as a batch of %d", len(b))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing consumed")
	}
}

// A reader waiting on Progress sees the position reach its target, and
// cuts the Gather short: it does not wait the full Gather after a wake.
func TestProgressWaitForCutsTheGatherShort(t *testing.T) {
	stream := newFakeStream()
	progress := NewProgress(0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Run(ctx, stream, 0, func(context.Context, []rsapi.OutputEvent) error { return nil },
		logrus.NewEntry(logrus.New()), progress)
	time.Sleep(20 * time.Millisecond) // let Run find the stream empty and wait
	stream.add(3)
	time.Sleep(Gather / 5) // Run is gathering now
	progress.WaitFor(ctx, 3, 10*time.Second)
	progress.mu.Lock()
	pos := progress.pos
	progress.mu.Unlock()
	if pos != 3 {
		t.Fatalf("WaitFor returned at position %d, want 3", pos)
	}
	// Nothing to wait for: it returns at once.
	start := time.Now()
	progress.WaitFor(ctx, 2, 10*time.Second)
	if time.Since(start) > time.Second {
		t.Fatal("WaitFor waited for a position already reached")
	}
}
