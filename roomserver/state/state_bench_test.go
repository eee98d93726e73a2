package state

import (
	"context"
	"database/sql"
	"testing"

	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// forEachDB runs a benchmark against each test database.
func forEachDB(b *testing.B, fn func(b *testing.B, db *storage.DB)) {
	for name, conn := range storagetest.Connections(b) {
		b.Run(name, func(b *testing.B) {
			db, err := storage.Open(conn)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			fn(b, db)
		})
	}
}

// BenchmarkApplyMembership applies one membership change to a 10,000-member
// room and commits it, as the roomserver does for a join or leave: one
// transaction, one new block, one new snapshot row.
func BenchmarkApplyMembership(b *testing.B) {
	forEachDB(b, func(b *testing.B, db *storage.DB) {
		ctx := context.Background()
		s := newStore(b, db)
		base := newSnapshot(b, s, members(10000, 0))
		ev := int64(100000)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			ev++
			err := s.WithTx(ctx, func(tx *sql.Tx) error {
				_, err := s.Apply(ctx, tx, room, base, []Entry{e(TypeMember, 1+ev%10000, ev)})
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkApplyInTx is BenchmarkApplyMembership without the commit: many
// changes to the same base in one transaction, to show what Apply itself
// costs (merge, encode, hash, two inserts).
func BenchmarkApplyInTx(b *testing.B) {
	forEachDB(b, func(b *testing.B, db *storage.DB) {
		ctx := context.Background()
		s := newStore(b, db)
		base := newSnapshot(b, s, members(10000, 0))
		ev := int64(100000)
		b.ReportAllocs()
		b.ResetTimer()
		err := s.WithTx(ctx, func(tx *sql.Tx) error {
			for b.Loop() {
				ev++
				if _, err := s.Apply(ctx, tx, room, base, []Entry{e(TypeMember, 1+ev%10000, ev)}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkLookup3 looks up three keys (create, power levels, a member: what
// an auth check needs) in a 10,000-member snapshot, with warm caches.
func BenchmarkLookup3(b *testing.B) {
	forEachDB(b, func(b *testing.B, db *storage.DB) {
		ctx := context.Background()
		s := newStore(b, db)
		nid := newSnapshot(b, s, append(members(10000, 0),
			e(TypeCreate, EmptyStateKey, 20001), e(TypePowerLevels, EmptyStateKey, 20002)))
		keys := []Key{{TypeCreate, EmptyStateKey}, {TypePowerLevels, EmptyStateKey}, {TypeMember, 4242}}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			got, err := s.Lookup(ctx, nil, nid, keys)
			if err != nil || len(got) != 3 {
				b.Fatalf("%v, %v", got, err)
			}
		}
	})
}

// BenchmarkEntries reads the whole state of a 10,000-member room (initial
// sync), with warm caches.
func BenchmarkEntries(b *testing.B) {
	forEachDB(b, func(b *testing.B, db *storage.DB) {
		ctx := context.Background()
		s := newStore(b, db)
		nid := newSnapshot(b, s, members(10000, 0))
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := s.Entries(ctx, nil, nid); err != nil {
				b.Fatal(err)
			}
		}
	})
}
