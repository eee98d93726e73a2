package state

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/plexus-chat/plexus/storage"
)

type nameKind int

const (
	kindType nameKind = iota
	kindStateKey
)

// nameTable is one of the two name <-> numeric ID tables with its caches.
type nameTable struct {
	kind                     nameKind
	what                     string
	selectNID, insert, names string
	byName                   *lru[string, int64]
	byNID                    *lru[int64, string]
}

func newNameTable(kind nameKind, size int) *nameTable {
	t := &nameTable{
		kind:   kind,
		byName: newLRU[string, int64](size),
		byNID:  newLRU[int64, string](size),
	}
	if kind == kindType {
		t.what, t.selectNID, t.insert, t.names = "event type", sqlSelectTypeNID, sqlInsertType, sqlSelectTypes
	} else {
		t.what, t.selectNID, t.insert, t.names = "state key", sqlSelectKeyNID, sqlInsertKey, sqlSelectKeys
	}
	return t
}

// cache records a committed mapping.
func (t *nameTable) cache(name string, nid int64) {
	t.byName.add(name, nid, 1)
	t.byNID.add(nid, name, 1)
}

// TypeNID returns the numeric ID of an event type, assigning one in tx if it
// has none yet. Concurrent calls for the same new type agree on one ID.
func (s *Store) TypeNID(ctx context.Context, tx *sql.Tx, eventType string) (int64, error) {
	return s.assign(ctx, s.types, tx, eventType)
}

// StateKeyNID returns the numeric ID of a state key, assigning one in tx if
// it has none yet.
func (s *Store) StateKeyNID(ctx context.Context, tx *sql.Tx, stateKey string) (int64, error) {
	return s.assign(ctx, s.stateKeys, tx, stateKey)
}

// LookupTypeNID returns the numeric ID of an event type, if it has one,
// reading through q (nil: committed data only).
func (s *Store) LookupTypeNID(ctx context.Context, q storage.Querier, eventType string) (int64, bool, error) {
	return s.lookup(ctx, s.types, s.view(q), eventType)
}

// LookupStateKeyNID returns the numeric ID of a state key, if it has one.
func (s *Store) LookupStateKeyNID(ctx context.Context, q storage.Querier, stateKey string) (int64, bool, error) {
	return s.lookup(ctx, s.stateKeys, s.view(q), stateKey)
}

// EventTypes returns the event type of each numeric ID. An ID that was never
// assigned is an error wrapping ErrNIDNotFound.
func (s *Store) EventTypes(ctx context.Context, q storage.Querier, nids []int64) (map[int64]string, error) {
	return s.reverse(ctx, s.types, s.view(q), nids)
}

// StateKeys returns the state key of each numeric ID.
func (s *Store) StateKeys(ctx context.Context, q storage.Querier, nids []int64) (map[int64]string, error) {
	return s.reverse(ctx, s.stateKeys, s.view(q), nids)
}

func checkName(t *nameTable, name string) error {
	if !utf8.ValidString(name) || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%w: %s %q", ErrInvalidName, t.what, name)
	}
	return nil
}

func (s *Store) lookup(ctx context.Context, t *nameTable, v view, name string) (int64, bool, error) {
	if nid, ok := t.byName.get(name); ok {
		return nid, true, nil
	}
	if err := checkName(t, name); err != nil {
		return 0, false, err
	}
	if v.ts != nil {
		if nid, ok := v.ts.name(t.kind, name); ok {
			return nid, true, nil
		}
	}
	var nid int64
	err := v.q.QueryRowContext(ctx, t.selectNID, name).Scan(&nid)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("look up %s: %w", t.what, err)
	}
	if v.cacheable() {
		t.cache(name, nid)
	}
	return nid, true, nil
}

// assign is lookup, and else an insert that is safe against concurrent
// inserts of the same name: ON CONFLICT DO NOTHING returns no row when
// another transaction committed the name first (PostgreSQL waits for it),
// and the name is then read again.
func (s *Store) assign(ctx context.Context, t *nameTable, tx *sql.Tx, name string) (int64, error) {
	if tx == nil {
		return 0, fmt.Errorf("assign %s: no transaction", t.what)
	}
	v := s.view(tx)
	nid, ok, err := s.lookup(ctx, t, v, name)
	if err != nil || ok {
		return nid, err
	}
	err = tx.QueryRowContext(ctx, t.insert, name).Scan(&nid)
	if err == nil {
		if v.ts != nil {
			v.ts.addName(t.kind, name, nid)
		}
		return nid, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		v.ts.markBroken()
		return 0, fmt.Errorf("assign %s: %w", t.what, err)
	}
	// Another transaction committed it meanwhile (it was not visible to
	// this one before, so it is not this transaction's own row).
	err = tx.QueryRowContext(ctx, t.selectNID, name).Scan(&nid)
	if err != nil {
		return 0, fmt.Errorf("assign %s: read after conflict: %w", t.what, err)
	}
	t.cache(name, nid)
	return nid, nil
}

// reverseChunk keeps IN lists well below both databases' parameter limits.
const reverseChunk = 500

func (s *Store) reverse(ctx context.Context, t *nameTable, v view, nids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(nids))
	var missing []int64
	for _, nid := range nids {
		if _, done := out[nid]; done {
			continue
		}
		if name, ok := t.byNID.get(nid); ok {
			out[nid] = name
			continue
		}
		if v.ts != nil {
			if name, ok := v.ts.nidName(t.kind, nid); ok {
				out[nid] = name
				continue
			}
		}
		out[nid] = "" // placeholder, also dedups missing
		missing = append(missing, nid)
	}
	cacheable := v.cacheable()
	found := make(map[int64]bool, len(missing))
	for len(missing) > 0 {
		chunk := missing[:min(len(missing), reverseChunk)]
		missing = missing[len(chunk):]
		args := make([]any, len(chunk))
		for i, nid := range chunk {
			args[i] = nid
		}
		rows, err := v.q.QueryContext(ctx, inList(t.names, len(chunk)), args...)
		if err != nil {
			return nil, fmt.Errorf("read %ss: %w", t.what, err)
		}
		for rows.Next() {
			var nid int64
			var name string
			if err := rows.Scan(&nid, &name); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read %ss: %w", t.what, err)
			}
			out[nid] = name
			found[nid] = true
			if cacheable {
				t.cache(name, nid)
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("read %ss: %w", t.what, err)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read %ss: %w", t.what, err)
		}
		for _, nid := range chunk {
			if !found[nid] {
				return nil, fmt.Errorf("%w: %s %d", ErrNIDNotFound, t.what, nid)
			}
		}
	}
	return out, nil
}
