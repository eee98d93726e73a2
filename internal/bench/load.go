package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Recorder collects latencies from many goroutines.
type Recorder struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records one latency.
func (r *Recorder) Add(d time.Duration) {
	r.mu.Lock()
	r.d = append(r.d, d)
	r.mu.Unlock()
}

// Time runs fn and records how long it took when it succeeds.
func (r *Recorder) Time(fn func() error) error {
	start := time.Now()
	err := fn()
	if err == nil {
		r.Add(time.Since(start))
	}
	return err
}

// Stats summarises latencies.
type Stats struct {
	Count                    int
	Mean, P50, P90, P99, Max time.Duration
}

func (s Stats) String() string {
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) }
	return fmt.Sprintf("n=%d mean=%sms p50=%sms p90=%sms p99=%sms max=%sms",
		s.Count, ms(s.Mean), ms(s.P50), ms(s.P90), ms(s.P99), ms(s.Max))
}

// Stats returns the summary of what was recorded.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	d := slices.Clone(r.d)
	r.mu.Unlock()
	if len(d) == 0 {
		return Stats{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	at := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	return Stats{Count: len(d), Mean: sum / time.Duration(len(d)), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: d[len(d)-1]}
}

// Parallel runs fn(i) for every i in [0, n) on conc goroutines and returns
// the first error, after which no new calls start.
func Parallel(ctx context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range max(1, min(conc, n)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// RegisterUsers registers users named prefix0, prefix1, … (n of them,
// conc at a time) with one password.
func RegisterUsers(ctx context.Context, c *Client, prefix string, n, conc int) ([]*User, error) {
	users := make([]*User, n)
	err := Parallel(ctx, n, conc, func(ctx context.Context, i int) error {
		u, err := c.Register(ctx, prefix+strconv.Itoa(i), "bench-password-1")
		users[i] = u
		return err
	})
	return users, err
}

// Result is the outcome of a timed load.
type Result struct {
	Ops     int
	Errors  int
	Elapsed time.Duration
	Latency Stats
	// FirstError is an example of what failed.
	FirstError error `json:"-"`
}

// Rate is operations per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// load runs op on conc goroutines (goroutine g calls op(ctx, g)) until the
// duration has passed, counting successes and failures.
func load(ctx context.Context, conc int, duration time.Duration, op func(ctx context.Context, g int) error) Result {
	var rec Recorder
	var ops, errs atomic.Int64
	var firstErr atomic.Pointer[error]
	deadline := time.Now().Add(duration)
	start := time.Now()
	var wg sync.WaitGroup
	for g := range conc {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if err := rec.Time(func() error { return op(ctx, g) }); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					// A failing server should not be hammered in a tight loop.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	res := Result{Ops: int(ops.Load()), Errors: int(errs.Load()), Elapsed: time.Since(start), Latency: rec.Stats()}
	if p := firstErr.Load(); p != nil {
		res.FirstError = *p
	}
	return res
}

// SendLoad has len(senders) goroutines send messages for the duration,
// sender i into rooms[i % len(rooms)], each waiting for its previous send
// to be answered.
func SendLoad(ctx context.Context, c *Client, senders []*User, rooms []string, duration time.Duration) Result {
	return load(ctx, len(senders), duration, func(ctx context.Context, g int) error {
		_, err := c.Send(ctx, senders[g], rooms[g%len(rooms)])
		return err
	})
}

// CreateLoad has len(creators) goroutines create public rooms for the
// duration.
func CreateLoad(ctx context.Context, c *Client, creators []*User, duration time.Duration) Result {
	var n atomic.Int64
	return load(ctx, len(creators), duration, func(ctx context.Context, g int) error {
		_, err := c.CreateRoom(ctx, creators[g], PublicRoom(fmt.Sprintf("load %d", n.Add(1))))
		return err
	})
}

// JoinPoint is the latency of joins that make member Members of a room.
type JoinPoint struct {
	Members     int
	Join, Leave Stats
}

// JoinSeries measures joins as a room grows. For each size N in sizes
// (ascending) it joins members (conc at a time) until the room has N-1,
// then, samples times, a fresh user from joiners joins (timed: the join
// that makes member N) and leaves again (timed apart), so the room is
// back at N-1. The room's creator, owner, is member 1; growing joins
// that a server answers with 202 (finishing in the background) are
// waited for through owner's view of the joined members. settle, when
// not nil, is called after growing (grown true) and before each measured
// join: it should wait until the server has finished its background work
// (its sync stream catching up with thousands of joins would otherwise be
// measured too).
func JoinSeries(ctx context.Context, c *Client, owner *User, roomID string, members, joiners []*User, sizes []int, samples, conc int, settle func(grown bool), progress func(string)) ([]JoinPoint, error) {
	if settle == nil {
		settle = func(bool) {}
	}
	if !slices.IsSorted(sizes) {
		return nil, errors.New("sizes must be ascending")
	}
	if need := len(sizes) * samples; len(joiners) < need {
		return nil, fmt.Errorf("need %d joiners, have %d", need, len(joiners))
	}
	have := 1 // the creator
	var out []JoinPoint
	for _, size := range sizes {
		if size-1 > len(members)+1 {
			return nil, fmt.Errorf("need %d members to reach %d, have %d", size-2, size, len(members))
		}
		start := time.Now()
		from := have
		if err := Parallel(ctx, size-1-have, conc, func(ctx context.Context, i int) error {
			err := c.Join(ctx, members[from-1+i], roomID)
			var herr *Error
			if errors.As(err, &herr) && herr.Status == http.StatusAccepted {
				// Dendrite answers 202 when a join waits too long in its
				// queue: "The room join will continue in the background."
				return nil
			}
			return err
		}); err != nil {
			return out, fmt.Errorf("grow room to %d: %w", size-1, err)
		}
		// Joins finishing in the background must be done before measuring.
		if err := c.WaitJoined(ctx, owner, roomID, size-1, 30*time.Minute); err != nil {
			return out, err
		}
		have = max(have, size-1)
		grown := time.Since(start)
		settle(true)
		if progress != nil {
			progress(fmt.Sprintf("room has %d members (grown in %v, settled after %v)", have,
				grown.Round(time.Millisecond), time.Since(start).Round(time.Millisecond)))
		}
		var join, leave Recorder
		for range samples {
			settle(false)
			u := joiners[0]
			joiners = joiners[1:]
			if err := join.Time(func() error { return c.Join(ctx, u, roomID) }); err != nil {
				return out, err
			}
			if err := leave.Time(func() error { return c.Leave(ctx, u, roomID) }); err != nil {
				return out, err
			}
		}
		out = append(out, JoinPoint{Members: size, Join: join.Stats(), Leave: leave.Stats()})
	}
	return out, nil
}

// Proc is what /proc tells about a process.
type Proc struct {
	// CPU is user plus system time.
	CPU time.Duration
	// RSS is the resident set size in bytes.
	RSS int64
}

// ReadProc reads a process's CPU time and resident memory from /proc
// (Linux only).
func ReadProc(pid int) (Proc, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return Proc{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	// Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Proc{}, err
	}
	const clockTicks = 100 // USER_HZ, 100 on every Linux platform Go supports
	p := Proc{CPU: time.Duration(utime+stime) * time.Second / clockTicks}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Proc{}, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return Proc{}, err
			}
			p.RSS = kb * 1024
		}
	}
	return p, nil
}

// WaitIdle waits until a process uses less than 5% of a core over half a
// second (or until max has passed) and returns its reading then.
func WaitIdle(pid int, max time.Duration) (Proc, error) {
	const tick = 500 * time.Millisecond
	prev, err := ReadProc(pid)
	if err != nil {
		return Proc{}, err
	}
	for deadline := time.Now().Add(max); time.Now().Before(deadline); {
		time.Sleep(tick)
		p, err := ReadProc(pid)
		if err != nil {
			return Proc{}, err
		}
		if p.CPU-prev.CPU < tick/20 {
			return p, nil
		}
		prev = p
	}
	return prev, nil
}
