package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"sync"

	"github.com/plexus-chat/plexus/roomserver/api"
)

// recentOutputs keeps the newest output stream entries in memory, as they
// were committed, so that the consumers following the stream (the sync
// API first: it stands between a send and the waiting /sync) read them
// without a query and without parsing the events again. It is bounded;
// a consumer further behind reads from the database as before.
//
// Every entry is added before its position is settled, so for any
// position at or above floor the cache knows every committed entry after
// it: a settled position it lacks was abandoned (its transaction rolled
// back).
type recentOutputs struct {
	mu      sync.Mutex
	floor   int64 // entries at or below floor may be missing
	entries map[int64]api.OutputEvent
	bytes   int
}

// The bounds of the cache: consumers read within a few entries of the
// head, so a few hundred entries cover bursts; the byte bound keeps large
// events from holding much memory.
const (
	recentOutputMaxEntries = 256
	recentOutputMaxBytes   = 1 << 20
)

func newRecentOutputs(floor int64) *recentOutputs {
	return &recentOutputs{floor: floor, entries: map[int64]api.OutputEvent{}}
}

// add remembers committed entries. Call it before settling their
// positions.
func (c *recentOutputs) add(outs []api.OutputEvent) {
	if len(outs) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range outs {
		if o.Position <= c.floor {
			continue // older than what the cache answers for
		}
		c.entries[o.Position] = o
		c.bytes += len(o.Event.JSON())
	}
	for len(c.entries) > recentOutputMaxEntries || c.bytes > recentOutputMaxBytes {
		c.raiseFloor(c.floor + 1)
	}
}

// raiseFloor drops the entries up to p, which are then read from the
// database. Call it with mu held.
func (c *recentOutputs) raiseFloor(p int64) {
	for c.floor < p {
		c.floor++
		if o, ok := c.entries[c.floor]; ok {
			delete(c.entries, c.floor)
			c.bytes -= len(o.Event.JSON())
		}
	}
}

// forget makes the cache answer for nothing up to the given positions:
// after a transaction failed in a way that may have committed anyway, its
// entries are read from the database.
func (c *recentOutputs) forget(positions []int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range positions {
		c.raiseFloor(p)
	}
}

// since returns up to limit entries after position and up to upTo, and
// false when the cache cannot answer for all of them.
func (c *recentOutputs) since(position, upTo int64, limit int) ([]api.OutputEvent, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if position < c.floor {
		return nil, false
	}
	var out []api.OutputEvent
	for p := position + 1; p <= upTo && len(out) < limit; p++ {
		if o, ok := c.entries[p]; ok {
			// Consumers get their own slices; the event is immutable.
			o.AddsState = append([]string(nil), o.AddsState...)
			o.RemovesState = append([]string(nil), o.RemovesState...)
			out = append(out, o)
		}
	}
	return out, true
}

// txn is a transaction that remembers the stream positions it allocated,
// so that they are settled whether it commits or not, and the output
// entries it wrote, for the cache once it commits.
type txn struct {
	*sql.Tx
	positions []int64
	outputs   []api.OutputEvent
}

// writeOutput appends o to the output stream in t. eventNID is the stored
// row of o.Event.
func (r *Roomserver) writeOutput(ctx context.Context, t *txn, roomNID, eventNID int64, o api.OutputEvent) error {
	adds, _ := json.Marshal(o.AddsState)
	removes, _ := json.Marshal(o.RemovesState)
	if _, err := t.ExecContext(ctx, sqlInsertOutput, o.Position, roomNID, eventNID, string(adds), string(removes)); err != nil {
		return err
	}
	t.outputs = append(t.outputs, o)
	return nil
}

// setOutputTxn records on t's output entries of an event the client
// transaction that sent it, as the database's join with the transaction
// table gives it.
func (t *txn) setOutputTxn(eventID, txnID, deviceID string) {
	for i := range t.outputs {
		if t.outputs[i].Event.EventID() == eventID {
			t.outputs[i].TxnID, t.outputs[i].DeviceID = txnID, deviceID
		}
	}
}

func (r *Roomserver) inTx(ctx context.Context, fn func(t *txn) error) error {
	var positions []int64
	var outputs []api.OutputEvent
	var fnErr error
	err := r.state.WithTx(ctx, func(tx *sql.Tx) error {
		t := &txn{Tx: tx}
		defer func() {
			positions = append(positions, t.positions...)
			outputs = t.outputs // only the last attempt's entries can have committed
		}()
		fnErr = fn(t)
		return fnErr
	})
	switch {
	case err == nil:
		r.recent.add(outputs)
	case fnErr == nil:
		// The commit failed: it may have committed all the same.
		r.recent.forget(positions)
	}
	r.stream.settle(positions...)
	return err
}
