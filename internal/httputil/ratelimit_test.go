package httputil

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

// fakeClock is a limiter clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newLimiter(perSecond float64, burst int) (*RateLimiter, *fakeClock) {
	c := &fakeClock{t: time.Unix(1700000000, 0)}
	l := NewRateLimiter(perSecond, burst)
	l.now = c.now
	return l, c
}

func TestRateLimiterBurstThenRefill(t *testing.T) {
	l, clock := newLimiter(1, 3)
	for i := range 3 {
		if ok, _ := l.Allow("alice"); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	ok, wait := l.Allow("alice")
	if ok || wait != time.Second {
		t.Fatalf("after the burst: ok=%v wait=%v, want refused for 1s", ok, wait)
	}
	// Another key has its own bucket.
	if ok, _ := l.Allow("bob"); !ok {
		t.Fatal("bob limited by alice's requests")
	}

	clock.add(400 * time.Millisecond)
	if ok, wait := l.Allow("alice"); ok || wait != 600*time.Millisecond {
		t.Fatalf("part way: ok=%v wait=%v, want refused for 600ms", ok, wait)
	}
	clock.add(600 * time.Millisecond)
	if ok, _ := l.Allow("alice"); !ok {
		t.Fatal("not refilled after 1s")
	}
	if ok, _ := l.Allow("alice"); ok {
		t.Fatal("refilled more than one token in 1s")
	}

	// A long pause refills only up to the burst.
	clock.add(time.Hour)
	for i := range 3 {
		if ok, _ := l.Allow("alice"); !ok {
			t.Fatalf("request %d after a pause refused", i+1)
		}
	}
	if ok, _ := l.Allow("alice"); ok {
		t.Fatal("bucket grew past the burst")
	}
}

func TestRateLimiterCheck(t *testing.T) {
	l, _ := newLimiter(0.5, 1)
	if err := l.Check("k"); err != nil {
		t.Fatal(err)
	}
	var merr *Error
	if err := l.Check("k"); !errors.As(err, &merr) || merr.Status != http.StatusTooManyRequests ||
		merr.Code != "M_LIMIT_EXCEEDED" || merr.Extra["retry_after_ms"] != int64(2000) {
		t.Fatalf("got %#v", err)
	}
}

func TestRateLimiterNil(t *testing.T) {
	var l *RateLimiter
	for range 1000 {
		if ok, wait := l.Allow("k"); !ok || wait != 0 {
			t.Fatal("nil limiter refused")
		}
		if err := l.Check("k"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRateLimiterGC(t *testing.T) {
	l, clock := newLimiter(1, 3)
	l.Allow("idle")
	for range 3 {
		l.Allow("busy")
	}
	clock.add(1500 * time.Millisecond)
	l.gc(clock.now())
	if _, ok := l.buckets["idle"]; ok {
		t.Fatal("a full bucket was kept")
	}
	if _, ok := l.buckets["busy"]; !ok {
		t.Fatal("a bucket still refilling was dropped")
	}
	// gc drops nothing a client would notice: busy is still limited.
	if ok, _ := l.Allow("busy"); !ok {
		t.Fatal("busy should have 1.5 tokens")
	}
	if ok, _ := l.Allow("busy"); ok {
		t.Fatal("busy bucket was reset by gc")
	}

	// Allow collects on its own once a minute has passed.
	clock.add(2 * time.Minute)
	l.Allow("new")
	if len(l.buckets) != 1 {
		t.Fatalf("buckets after automatic gc: %v", l.buckets)
	}
}
