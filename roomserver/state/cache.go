package state

import (
	"database/sql"
	"sync"

	"github.com/plexus-chat/plexus/storage"
)

// Caching and transactions
//
// Numeric IDs, blocks and snapshots are immutable once committed and never
// deleted, so an ID read from a committed row means the same thing forever
// and may be cached by ID. Rows that are not yet committed are different: if
// their transaction rolls back, their IDs are free again, and SQLite hands a
// rolled-back rowid to the next insert (it picks MAX(rowid)+1), so a cached
// "block 42 = X" could later describe someone else's block 42. A cached
// name -> ID mapping from a rolled-back insert would be worse still: the
// next caller would get an ID that no row has. So the rule is:
//
//	Only rows known to be committed enter the shared caches.
//
// A row is known to be committed when
//   - it was read outside a transaction (the reader pool, or any *sql.DB);
//   - it was read inside a transaction started by Store.WithTx and that
//     transaction did not write it itself. A transaction sees only committed
//     rows and its own writes (PostgreSQL READ COMMITTED and SQLite alike),
//     and every write to these tables goes through this Store, which records
//     per transaction (txState) what the transaction wrote;
//   - it was written by a transaction started by Store.WithTx that has
//     committed: WithTx promotes the txState into the caches after COMMIT
//     returns without error.
//
// Rows written by a transaction are served to later reads in the same
// transaction from its txState, so Apply on the result of an Apply in the
// same transaction needs no query. For a transaction that did not come from
// Store.WithTx nothing read inside it is cached, since it may be its own
// uncommitted write; reads still consult the shared caches, whose content is
// committed and so visible to every transaction.
//
// If an insert fails halfway the transaction is marked broken: a row may
// exist that the txState does not know of, so from then on nothing read in
// that transaction is cached (what it recorded is still promoted if the
// caller commits anyway, since those rows are then committed).
//
// A second Store on the same database, or rows deleted by hand, would break
// these assumptions: one Store per database, and no deletions without
// clearing the caches.

// txState is what one transaction started by Store.WithTx has written.
type txState struct {
	mu        sync.Mutex
	broken    bool
	names     [2]map[string]int64 // by nameKind
	nids      [2]map[int64]string // by nameKind
	blocks    map[int64]*block
	snapshots map[SnapshotNID]*snapshot
}

func (s *Store) track(tx *sql.Tx) *txState {
	ts := &txState{
		names:     [2]map[string]int64{{}, {}},
		nids:      [2]map[int64]string{{}, {}},
		blocks:    map[int64]*block{},
		snapshots: map[SnapshotNID]*snapshot{},
	}
	s.txMu.Lock()
	s.txs[tx] = ts
	s.txMu.Unlock()
	return ts
}

func (s *Store) untrack(tx *sql.Tx) {
	s.txMu.Lock()
	delete(s.txs, tx)
	s.txMu.Unlock()
}

// promote caches what a committed transaction wrote.
func (s *Store) promote(ts *txState) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for kind, t := range []*nameTable{s.types, s.stateKeys} {
		for name, nid := range ts.names[kind] {
			t.cache(name, nid)
		}
	}
	for nid, b := range ts.blocks {
		s.cacheBlock(nid, b)
	}
	for nid, sp := range ts.snapshots {
		s.snapshots.add(nid, sp, 1)
	}
}

func (ts *txState) markBroken() {
	if ts != nil {
		ts.mu.Lock()
		ts.broken = true
		ts.mu.Unlock()
	}
}

func (ts *txState) name(kind nameKind, name string) (int64, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	nid, ok := ts.names[kind][name]
	return nid, ok
}

func (ts *txState) nidName(kind nameKind, nid int64) (string, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	name, ok := ts.nids[kind][nid]
	return name, ok
}

func (ts *txState) addName(kind nameKind, name string, nid int64) {
	ts.mu.Lock()
	ts.names[kind][name] = nid
	ts.nids[kind][nid] = name
	ts.mu.Unlock()
}

func (ts *txState) block(nid int64) *block {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.blocks[nid]
}

func (ts *txState) addBlock(nid int64, b *block) {
	ts.mu.Lock()
	ts.blocks[nid] = b
	ts.mu.Unlock()
}

func (ts *txState) snapshot(nid SnapshotNID) *snapshot {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.snapshots[nid]
}

func (ts *txState) addSnapshot(nid SnapshotNID, sp *snapshot) {
	ts.mu.Lock()
	ts.snapshots[nid] = sp
	ts.mu.Unlock()
}

// view is where a read goes and what may be cached from it.
type view struct {
	q storage.Querier
	// committed: q sees only committed rows.
	committed bool
	// ts is set when q is a transaction started by Store.WithTx.
	ts *txState
}

// view resolves a querier: nil means the reader pool.
func (s *Store) view(q storage.Querier) view {
	switch q := q.(type) {
	case nil:
		return view{q: s.db.Reader(), committed: true}
	case *sql.DB:
		if q == nil {
			return view{q: s.db.Reader(), committed: true}
		}
		return view{q: q, committed: true}
	case *sql.Tx:
		if q == nil {
			return view{q: s.db.Reader(), committed: true}
		}
		s.txMu.Lock()
		ts := s.txs[q]
		s.txMu.Unlock()
		return view{q: q, ts: ts}
	default:
		// Some other wrapper: it may be a transaction we do not know.
		return view{q: q}
	}
}

// cacheable reports whether a row read through v, and not found in v.ts,
// is known to be committed.
func (v view) cacheable() bool {
	if v.committed {
		return true
	}
	if v.ts == nil {
		return false
	}
	v.ts.mu.Lock()
	defer v.ts.mu.Unlock()
	return !v.ts.broken
}
