package roomserver

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/plexus-chat/plexus/internal/pducache"
	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// outputStream hands out stream positions and tells consumers how far they
// may read. Positions are allocated in Go, before the transaction that
// writes them commits; two rooms' transactions may commit out of order, so
// a consumer may only read up to the position below the oldest one still
// in flight. Otherwise it could read 5, move on, and never see 4.
type outputStream struct {
	mu       sync.Mutex
	next     int64          // the next position to hand out
	inFlight map[int64]bool // allocated, not yet committed or abandoned
	safe     int64          // every position <= safe is settled
	waiters  chan struct{}  // closed and replaced when safe grows
}

func newOutputStream(ctx context.Context, db *storage.DB) (*outputStream, error) {
	var max int64
	if err := db.Reader().QueryRowContext(ctx, sqlMaxOutput).Scan(&max); err != nil {
		return nil, err
	}
	return &outputStream{next: max + 1, inFlight: map[int64]bool{}, safe: max, waiters: make(chan struct{})}, nil
}

// allocate reserves the next position; settle must follow.
func (s *outputStream) allocate() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.next
	s.next++
	s.inFlight[p] = true
	return p
}

// settle marks positions committed or abandoned (a rolled-back position is
// simply a gap) and wakes waiters if the readable range grew.
func (s *outputStream) settle(positions ...int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range positions {
		delete(s.inFlight, p)
	}
	safe := s.next - 1
	for p := range s.inFlight {
		if p-1 < safe {
			safe = p - 1
		}
	}
	if safe > s.safe {
		s.safe = safe
		close(s.waiters)
		s.waiters = make(chan struct{})
	}
}

func (s *outputStream) latest() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.safe
}

// Notify returns a channel that is closed once entries after position can
// be read.
func (r *Roomserver) Notify(position int64) <-chan struct{} {
	s := r.stream
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.safe > position {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return s.waiters
}

// LatestPosition is the newest readable position.
func (r *Roomserver) LatestPosition(ctx context.Context) (int64, error) {
	return r.stream.latest(), nil
}

// OutputSince returns up to limit stream entries after position.
func (r *Roomserver) OutputSince(ctx context.Context, position int64, limit int) ([]api.OutputEvent, error) {
	upTo := r.stream.latest()
	if position >= upTo {
		return nil, nil
	}
	if out, ok := r.recent.since(position, upTo, limit); ok {
		return out, nil
	}
	return r.outputFromDB(ctx, position, upTo, limit)
}

// outputFromDB reads up to limit stream entries in (position, upTo].
func (r *Roomserver) outputFromDB(ctx context.Context, position, upTo int64, limit int) ([]api.OutputEvent, error) {
	rows, err := r.db.Reader().QueryContext(ctx, sqlSelectOutput, position, upTo, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.OutputEvent
	for rows.Next() {
		var (
			pos           int64
			adds, removes string
			ev            storedEvent
		)
		var eventID, roomID, ver, eventJSON string
		var before, after int64
		var redacted bool
		var txnID, deviceID string
		if err := rows.Scan(&pos, &adds, &removes, &txnID, &deviceID, &ev.nid, &eventID, &roomID, &ver, &ev.depth, &ev.status,
			&before, &after, &ev.position, &redacted, &eventJSON); err != nil {
			return nil, err
		}
		pdu, err := pducache.ParseStored(ver, eventID, eventJSON, redacted)
		if err != nil {
			return nil, err
		}
		o := api.OutputEvent{Position: pos, RoomID: roomID, Event: pdu, TxnID: txnID, DeviceID: deviceID}
		if err := json.Unmarshal([]byte(adds), &o.AddsState); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(removes), &o.RemovesState); err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, rows.Err()
}
