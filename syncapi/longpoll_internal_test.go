package syncapi

import (
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// A panic in the database work reaches the request's goroutine, where the
// server's middleware turns it into a 500, instead of killing the server.
func TestOffStackPassesPanics(t *testing.T) {
	defer func() {
		p, ok := recover().(*offStackPanic)
		if !ok || p.value != "boom" || !strings.Contains(p.Error(), "longpoll_internal_test.go") {
			t.Fatalf("recovered %#v, want boom with the job's stack", p)
		}
	}()
	offStack(func() { panic("boom") })
	t.Fatal("offStack returned after a panic")
}

// net/http's abort panic passes as it is: net/http recognises it by value.
func TestOffStackPassesAbort(t *testing.T) {
	defer func() {
		if p := recover(); p != http.ErrAbortHandler { //nolint:errorlint // compared by value, as net/http does
			t.Fatalf("recovered %v, want http.ErrAbortHandler", p)
		}
	}()
	offStack(func() { panic(http.ErrAbortHandler) })
}

func TestOffStackRuns(t *testing.T) {
	ran := false
	offStack(func() { ran = true })
	if !ran {
		t.Fatal("fn did not run")
	}
}

// More callers than workers all finish: the rest queue for a worker.
func TestOffStackManyCallers(t *testing.T) {
	const callers = 3 * maxOffStackWorkers
	release := make(chan struct{})
	var started sync.WaitGroup
	var finished sync.WaitGroup
	started.Add(maxOffStackWorkers)
	var ran atomic.Int32
	for i := range callers {
		finished.Add(1)
		go func() {
			defer finished.Done()
			offStack(func() {
				if i < maxOffStackWorkers {
					started.Done()
					<-release // hold every worker busy at first
				}
				ran.Add(1)
			})
		}()
	}
	started.Wait()
	if n := offStackWorkers.Load(); n > maxOffStackWorkers {
		t.Fatalf("%d workers, at most %d allowed", n, maxOffStackWorkers)
	}
	close(release)
	finished.Wait()
	if ran.Load() != callers {
		t.Fatalf("%d of %d jobs ran", ran.Load(), callers)
	}
}

// A job that ends its goroutine (runtime.Goexit) releases its caller, and
// the worker it ended is replaced on demand.
func TestOffStackGoexit(t *testing.T) {
	offStack(func() { runtime.Goexit() })
	ran := false
	offStack(func() { ran = true })
	if !ran {
		t.Fatal("no job ran after a Goexit")
	}
}

// deep recurses through frames of about 600 bytes: deep(50) needs a 32 KB
// stack, as an SQLite query does.
//
//go:noinline
func deep(n int) int {
	var buf [512]byte
	buf[n%512] = byte(n)
	if n == 0 {
		return int(buf[0])
	}
	return deep(n-1) + int(buf[n%512])
}

func BenchmarkDeepDirect(b *testing.B) {
	for b.Loop() {
		deep(50)
	}
}

func BenchmarkDeepOffStack(b *testing.B) {
	for b.Loop() {
		offStack(func() { deep(50) })
	}
}
