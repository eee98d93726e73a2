package mediaapi

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestUploadWaitersWakeAndForget(t *testing.T) {
	u := newUploadWaiters()
	ch1, rel1 := u.wait("a")
	ch2, rel2 := u.wait("a")
	u.done("a")
	for _, ch := range []<-chan struct{}{ch1, ch2} {
		select {
		case <-ch:
		case <-time.After(time.Second):
			t.Fatal("waiter not woken")
		}
	}
	rel1()
	rel2()
	// Waiters that give up leave nothing behind.
	_, rel := u.wait("b")
	rel()
	if len(u.waiting) != 0 {
		t.Fatalf("entries left: %v", u.waiting)
	}
}

func TestFlightGroupSharesOneRun(t *testing.T) {
	var g flightGroup
	var runs atomic.Int32
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err, _ := g.do("k", func() (any, error) {
				runs.Add(1)
				<-start
				return 42, nil
			})
			if v != 42 || err != nil {
				t.Errorf("got %v, %v", v, err)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(start)
	wg.Wait()
	if runs.Load() != 1 {
		t.Fatalf("%d runs, want 1", runs.Load())
	}
}
