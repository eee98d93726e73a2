package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Per-destination queues. Each destination with something queued has one
// goroutine that sends its queue as transactions, one at a time: it puts
// the oldest rows in a transaction (marking them with its ID in the
// database), sends it, and deletes them once the destination answers 200.
// A transaction that fails is sent again, as is and under the same ID,
// after a back-off, also after a restart; the receiver answers a repeated
// ID without processing it again, so nothing is applied twice.

// The spec's limits on one transaction, and ours on its EDUs' size (a
// to-device EDU can be large; receivers cap request bodies).
const (
	maxTxnPDUs     = 50
	maxTxnEDUs     = 100
	maxTxnEDUBytes = 2 << 20
)

// retryPolicy says how the sender waits for destinations that fail.
type retryPolicy struct {
	// min is the wait after the first failure; it doubles with each
	// failure in a row up to max.
	min, max time.Duration
	// dropAfter is how long entries may wait; older ones are dropped (the
	// destination was down that long; it catches up on room history by
	// other means when it is back).
	dropAfter time.Duration
	// timeout bounds one transaction request.
	timeout time.Duration
}

var defaultRetryPolicy = retryPolicy{min: 5 * time.Second, max: time.Hour, dropAfter: 24 * time.Hour, timeout: time.Minute}

// delay is the wait after the nth failure in a row (n >= 1): min doubled
// n-1 times, at most max, of which a random part up to half is taken off,
// so that destinations that failed together do not all retry together.
// rnd(k) returns a number in [0, k).
func (p retryPolicy) delay(n int, rnd func(int64) int64) time.Duration {
	d := p.max
	if n <= 1 {
		d = min(p.min, p.max)
	} else if shift := n - 1; shift < 32 && p.min<<shift > 0 && p.min<<shift < p.max {
		d = p.min << shift
	}
	if half := int64(d / 2); half > 0 {
		d -= time.Duration(rnd(half + 1))
	}
	return d
}

// destQueue is a destination's worker state; the fields are guarded by
// Sender.mu, the channels have room for one signal.
type destQueue struct {
	name spec.ServerName
	// wake says something new was queued.
	wake chan struct{}
	// poke says the destination is up (it sent us a transaction): stop
	// backing off.
	poke    chan struct{}
	running bool
	// failing is true while the destination is backed off.
	failing bool
}

// wake makes sure a worker sends the destination's queue.
func (s *Sender) wake(dest spec.ServerName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[dest]
	if q == nil {
		q = &destQueue{name: dest, wake: make(chan struct{}, 1), poke: make(chan struct{}, 1)}
		s.queues[dest] = q
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
	if !q.running && s.ctx != nil && s.ctx.Err() == nil {
		q.running = true
		s.wg.Add(1)
		go s.run(s.ctx, q)
	}
}

// MarkAlive tells the sender that a server is up (it just sent us a
// transaction): if the sender was backing off from it, it tries again now.
func (s *Sender) MarkAlive(server spec.ServerName) {
	s.mu.Lock()
	q := s.queues[server]
	if q == nil || !q.failing {
		s.mu.Unlock()
		return
	}
	select {
	case q.poke <- struct{}{}:
	default:
	}
	idle := !q.running
	if idle {
		q.failing = false
	}
	s.mu.Unlock()
	if idle {
		// Nothing is queued; forget the back-off for what comes next.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.store.setBackoff(ctx, server, 0, time.Time{}, time.Time{}); err != nil {
			s.log.WithError(err).WithField("destination", server).Warn("cannot clear back-off")
		}
	}
}

// run sends a destination's queue until it is empty or ctx ends.
func (s *Sender) run(ctx context.Context, q *destQueue) {
	defer s.wg.Done()
	log := s.log.WithField("destination", q.name)
	st, err := s.store.destination(ctx, q.name)
	if err != nil {
		log.WithError(err).Warn("cannot read the destination's state")
	}
	s.setFailing(q, st.failures > 0)
	for {
		if wait := time.Until(st.retryAt); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-q.poke:
				t.Stop()
				log.Info("destination is back; retrying now")
				st.failures, st.retryAt, st.failingSince = 0, time.Time{}, time.Time{}
			case <-t.C:
			}
		}
		select { // what is queued now is looked at now
		case <-q.wake:
		default:
		}
		worked, err := s.attempt(ctx, q.name, &st, log)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil {
			st.failures++
			if st.failingSince.IsZero() {
				st.failingSince = now
			}
			wait := s.policy.delay(st.failures, rand.Int64N)
			st.retryAt = now.Add(wait)
			log.WithError(err).WithFields(logrus.Fields{"failures": st.failures, "retry_in": wait.Round(time.Second).String()}).
				Warn("sending a transaction failed")
			s.setFailing(q, true)
			if err := s.store.setBackoff(ctx, q.name, st.failures, st.retryAt, st.failingSince); err != nil {
				log.WithError(err).Warn("cannot store back-off")
			}
			continue
		}
		if worked && (st.failures > 0 || !st.retryAt.IsZero()) {
			st.failures, st.retryAt, st.failingSince = 0, time.Time{}, time.Time{}
			s.setFailing(q, false)
			if err := s.store.setBackoff(ctx, q.name, 0, time.Time{}, time.Time{}); err != nil {
				log.WithError(err).Warn("cannot clear back-off")
			}
		}
		if worked {
			continue
		}
		s.mu.Lock()
		select {
		case <-q.wake: // queued meanwhile
			s.mu.Unlock()
			continue
		default:
		}
		q.running = false
		s.mu.Unlock()
		return
	}
}

func (s *Sender) setFailing(q *destQueue, failing bool) {
	s.mu.Lock()
	q.failing = failing
	s.mu.Unlock()
}

// attempt sends the destination's transaction in flight, or a new one
// made of the oldest queued rows. It reports whether there was anything
// to do; an error means the destination did not take the transaction.
func (s *Sender) attempt(ctx context.Context, dest spec.ServerName, st *destState, log *logrus.Entry) (bool, error) {
	now := time.Now()
	old, dropped, err := s.store.dropStale(ctx, dest, now.Add(-s.policy.dropAfter), now)
	if err != nil {
		return false, err
	}
	if old > 0 {
		log.WithFields(logrus.Fields{"events": old, "edus": dropped}).
			Warn("dropped queued events older than the queue keeps them: the destination was unreachable too long")
	}
	if st.txnID == "" {
		id := fmt.Sprintf("%d-%s", now.UnixMilli(), randomID(8))
		claimed, err := s.store.claim(ctx, dest, id, maxTxnPDUs, maxTxnEDUs, maxTxnEDUBytes)
		if err != nil || !claimed {
			return false, err
		}
		st.txnID = id
	}
	eventIDs, edus, err := s.store.txnContents(ctx, dest, st.txnID)
	if err != nil {
		return false, err
	}
	txn := gomatrixserverlib.Transaction{
		TransactionID:  gomatrixserverlib.TransactionID(st.txnID),
		Origin:         s.self,
		Destination:    dest,
		OriginServerTS: spec.AsTimestamp(now),
		PDUs:           []json.RawMessage{},
	}
	for _, id := range eventIDs {
		ev, err := s.rs.Event(ctx, id)
		if errors.Is(err, rsapi.ErrEventNotFound) {
			log.WithField("event_id", id).Warn("queued event is gone; not sending it")
			continue
		}
		if err != nil {
			return false, err
		}
		txn.PDUs = append(txn.PDUs, ev.JSON())
	}
	for _, e := range edus {
		txn.EDUs = append(txn.EDUs, gomatrixserverlib.EDU{Type: e.Type, Origin: string(s.self), Content: e.Content})
	}
	if len(txn.PDUs) > 0 || len(txn.EDUs) > 0 {
		sendCtx, cancel := context.WithTimeout(ctx, s.policy.timeout)
		resp, err := s.client.SendTransaction(sendCtx, txn)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return false, ctx.Err()
		case err != nil && refusedForGood(err):
			log.WithError(err).WithField("txn_id", st.txnID).Error("destination refused a transaction; dropping it")
		case err != nil:
			return false, err
		default:
			for eventID, r := range resp.PDUs {
				if r.Error != "" {
					log.WithFields(logrus.Fields{"event_id": eventID, "error": r.Error}).Info("destination did not accept an event")
				}
			}
		}
	}
	if err := s.store.ack(ctx, dest, st.txnID); err != nil {
		return false, err
	}
	st.txnID = ""
	return true, nil
}

// refusedForGood reports whether a transaction's failure will not go
// away by sending it again: the destination found the request itself
// malformed or too large. Anything else (no answer, 5xx, 429, 401 while it
// fetches our keys, ...) is retried.
func refusedForGood(err error) bool {
	var httpErr gomatrix.HTTPError
	if !errors.As(err, &httpErr) {
		return false
	}
	return httpErr.Code == http.StatusBadRequest || httpErr.Code == http.StatusRequestEntityTooLarge
}
