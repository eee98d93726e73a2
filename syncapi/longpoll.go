package syncapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// A held /sync long-poll costs the memory it keeps while it waits, and
// the largest part is its goroutine's stack: SQLite's deep call chains
// (modernc.org/sqlite) grow a goroutine's stack to 32 KB, and a waiting
// goroutine keeps that stack until garbage collections shrink it, half at a
// time. So the /sync handler does its database work, the access token
// check included, on short-lived goroutines, and waits on the request's
// own goroutine, whose stack stays small.

// heldSync is a long-poll with nothing to answer yet.
type heldSync struct {
	req   *syncRequest
	wake  <-chan struct{}
	empty []byte // the encoded empty answer, for the timeout
}

// syncHandler serves /sync; authed is the client API's access token check.
func (s *SyncAPI) syncHandler(authed func(AuthedHandler) http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var held *heldSync
		check := authed(func(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
			var err error
			held, err = s.sync(w, r, sess)
			return err
		})
		offStack(func() { check.ServeHTTP(w, r) })
		if held != nil {
			if err := s.wait(w, r, held); err != nil {
				httputil.WriteError(w, r, err)
			}
		}
	})
}

// wait holds a long-poll until news for its user arrive (then answers what
// is new), its timeout passes (then answers the empty answer) or the client
// goes away.
func (s *SyncAPI) wait(w http.ResponseWriter, r *http.Request, held *heldSync) error {
	timer := time.NewTimer(held.req.timeout)
	defer timer.Stop()
	select {
	case <-held.wake:
		var err error
		offStack(func() {
			var resp *syncResponse
			if resp, err = s.buildResponse(r.Context(), held.req); err == nil {
				httputil.WriteJSON(w, http.StatusOK, resp)
			}
		})
		return err
	case <-timer.C:
		httputil.WriteJSON(w, http.StatusOK, json.RawMessage(held.empty))
		return nil
	case <-r.Context().Done():
		return r.Context().Err()
	}
}

// offStack's workers keep the stacks they grew between jobs, so a job pays
// neither a goroutine's start nor its stack's growth (14 µs on this
// machine). At most maxOffStackWorkers exist: a burst of requests (clients
// reconnecting together) would otherwise grow as many 32 KB stacks at
// once, and the heap keeps the memory they had. That is far more than the
// database has connections, so requests that could run do not queue.
const maxOffStackWorkers = 64

type offStackJob struct {
	fn   func()
	done chan any // the job's panic, or nil
}

var (
	offStackJobs    = make(chan offStackJob)
	offStackWorkers atomic.Int32
)

// offStack runs fn on one of the workers and waits for it, passing a panic
// on to the caller's goroutine (where the server's middleware recovers it).
func offStack(fn func()) {
	j := offStackJob{fn: fn, done: make(chan any, 1)}
	select {
	case offStackJobs <- j: // an idle worker took it
	default:
		if offStackWorkers.Add(1) <= maxOffStackWorkers {
			go offStackWorker(j)
		} else {
			offStackWorkers.Add(-1)
			offStackJobs <- j
		}
	}
	if p := <-j.done; p != nil {
		panic(p)
	}
}

func offStackWorker(j offStackJob) {
	defer offStackWorkers.Add(-1) // only if a job called runtime.Goexit
	for {
		j.done <- runOffStackJob(j)
		j = <-offStackJobs
	}
}

func runOffStackJob(j offStackJob) (p any) {
	returned := false
	defer func() {
		if !returned {
			if p = recover(); p == nil {
				// runtime.Goexit: the worker ends; release the caller.
				j.done <- nil
			} else if p != http.ErrAbortHandler { //nolint:errorlint // net/http compares it so
				// The caller's goroutine re-panics: keep where it happened.
				p = &offStackPanic{value: p, stack: debug.Stack()}
			}
		}
	}()
	j.fn()
	returned = true
	return nil
}

// offStackPanic is a job's panic as its caller re-raises it, with the
// stack of the worker where it happened for the log.
type offStackPanic struct {
	value any
	stack []byte
}

func (p *offStackPanic) Error() string {
	return fmt.Sprintf("%v\n\nin the sync worker:\n%s", p.value, p.stack)
}
