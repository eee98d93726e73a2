// Package state stores the state of rooms for the roomserver: numeric IDs
// for event types and state keys, and state snapshots made of shared,
// immutable blocks, so that a change to one state entry of a 10,000-member
// room writes one small block and one snapshot row. README.md explains the
// design.
package state

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/plexus-chat/plexus/storage"
)

// Key names one piece of room state: an event type and a state key, by
// their numeric IDs (both > 0).
type Key struct{ TypeNID, StateKeyNID int64 }

// Compare orders keys by type, then state key.
func (k Key) Compare(o Key) int {
	if c := cmp.Compare(k.TypeNID, o.TypeNID); c != 0 {
		return c
	}
	return cmp.Compare(k.StateKeyNID, o.StateKeyNID)
}

// Entry is one piece of room state: the event that holds Key. In changes
// passed to Apply, EventNID 0 removes the key.
type Entry struct {
	Key
	EventNID int64
}

func compareEntries(a, b Entry) int { return a.Key.Compare(b.Key) }

// less is Compare(o) < 0, cheap enough to inline in merge loops.
func (k Key) less(o Key) bool {
	return k.TypeNID < o.TypeNID || (k.TypeNID == o.TypeNID && k.StateKeyNID < o.StateKeyNID)
}

// SnapshotNID identifies a stored snapshot: the whole state of a room at
// some point. 0 is the empty state, which has no row.
type SnapshotNID int64

// Errors. Errors from the database are returned wrapped as they come.
var (
	// ErrSnapshotNotFound: no snapshot has this ID.
	ErrSnapshotNotFound = errors.New("state: snapshot not found")
	// ErrNIDNotFound: a reverse lookup met an ID that was never assigned.
	ErrNIDNotFound = errors.New("state: numeric ID not found")
	// ErrDuplicateKey: a list of entries or changes names a key twice.
	ErrDuplicateKey = errors.New("state: duplicate state key")
	// ErrInvalidEntry: an entry has an ID <= 0 (or an event ID < 0 in a change).
	ErrInvalidEntry = errors.New("state: invalid state entry")
	// ErrWrongRoom: Apply was given a base snapshot of another room.
	ErrWrongRoom = errors.New("state: snapshot belongs to another room")
	// ErrInvalidName: an event type or state key is not valid UTF-8 or
	// contains U+0000, which PostgreSQL cannot store in TEXT (refused on
	// SQLite too, so both behave the same).
	ErrInvalidName = errors.New("state: event type or state key is not valid UTF-8 or contains NUL")
	// ErrCorrupt: stored state failed to decode or its hash does not match.
	ErrCorrupt = errors.New("state: corrupt stored state")
)

// Options sets the sizes of the in-memory caches. Zero fields take the
// defaults.
type Options struct {
	// BlockCacheEntries bounds the cached blocks by the total number of
	// state entries they hold (default 1,048,576: about 25 MB of entries).
	BlockCacheEntries int
	// SnapshotCacheSize bounds the number of cached snapshots, about 600
	// bytes each (default 8,192).
	SnapshotCacheSize int
	// TypeCacheSize and StateKeyCacheSize bound the cached numeric IDs of
	// event types and state keys, each direction separately (defaults 4,096
	// and 65,536). A remote server can invent any number of them, so even
	// these are bounded.
	TypeCacheSize, StateKeyCacheSize int
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.BlockCacheEntries, 1<<20)
	def(&o.SnapshotCacheSize, 8192)
	def(&o.TypeCacheSize, 4096)
	def(&o.StateKeyCacheSize, 1<<16)
	return o
}

// Store keeps numeric IDs and state snapshots. It is safe for concurrent
// use. Use one Store per database: its caches rely on seeing every write
// to its tables (see cache.go).
type Store struct {
	db        *storage.DB
	types     *nameTable
	stateKeys *nameTable
	blocks    *lru[int64, *block]
	snapshots *lru[SnapshotNID, *snapshot]

	txMu sync.Mutex
	txs  map[*sql.Tx]*txState

	// dbReads counts queries for snapshots and blocks, for tests that
	// check what the caches save.
	dbReads atomic.Int64
}

// New runs the migrations of the state tables and returns a Store with
// default cache sizes.
func New(ctx context.Context, db *storage.DB) (*Store, error) {
	return NewWithOptions(ctx, db, Options{})
}

// NewWithOptions is New with chosen cache sizes.
func NewWithOptions(ctx context.Context, db *storage.DB, opts Options) (*Store, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	s := &Store{
		db:        db,
		types:     newNameTable(kindType, opts.TypeCacheSize),
		stateKeys: newNameTable(kindStateKey, opts.StateKeyCacheSize),
		blocks:    newLRU[int64, *block](opts.BlockCacheEntries),
		snapshots: newLRU[SnapshotNID, *snapshot](opts.SnapshotCacheSize),
		txs:       make(map[*sql.Tx]*txState),
	}
	// The fixed IDs were committed by the migration.
	for nid, name := range fixedTypes {
		if name != "" {
			s.types.cache(name, int64(nid))
		}
	}
	s.stateKeys.cache("", EmptyStateKey)
	return s, nil
}

// WithTx runs fn in a transaction like storage.DB.WithTx (retries
// included). Everything this Store writes in that transaction is cached once
// it has committed, so the next reads of new snapshots, blocks and IDs need
// no query. Methods given a transaction that did not come from WithTx work
// just as well; only what they write is cached later, on first read.
func (s *Store) WithTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	var last *txState
	err := s.db.WithTx(ctx, func(tx *sql.Tx) error {
		ts := s.track(tx)
		defer s.untrack(tx)
		last = ts
		return fn(tx)
	})
	if err == nil && last != nil {
		s.promote(last)
	}
	return err
}
