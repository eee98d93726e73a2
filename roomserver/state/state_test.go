package state

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

const room = 7

var errStop = errors.New("stop")

func newStore(t testing.TB, db *storage.DB) *Store {
	t.Helper()
	s, err := New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// freshStore is a second Store on the same database with empty caches, to
// check what was really written. It only reads.
func freshStore(t testing.TB, db *storage.DB) *Store { return newStore(t, db) }

func count(t testing.TB, db *storage.DB, table string) int {
	t.Helper()
	var n int
	if err := db.Reader().QueryRowContext(context.Background(), "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func e(typ, key, ev int64) Entry { return Entry{Key: Key{typ, key}, EventNID: ev} }

// members returns n member entries with state keys 1..n and events base+1...
func members(n int, base int64) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = e(TypeMember, int64(i+1), base+int64(i+1))
	}
	return out
}

// applyNaive is the reference for Apply.
func applyNaive(base, changes []Entry) []Entry {
	m := map[Key]int64{}
	for _, x := range base {
		m[x.Key] = x.EventNID
	}
	for _, c := range changes {
		if c.EventNID == 0 {
			delete(m, c.Key)
		} else {
			m[c.Key] = c.EventNID
		}
	}
	var out []Entry
	for k, v := range m {
		out = append(out, Entry{k, v})
	}
	slices.SortFunc(out, compareEntries)
	return out
}

func sortedCopy(es []Entry) []Entry {
	out := slices.Clone(es)
	slices.SortFunc(out, compareEntries)
	return out
}

func equalEntries(a, b []Entry) bool { return len(a) == len(b) && (len(a) == 0 || slices.Equal(a, b)) }

func mustTx(t testing.TB, s *Store, fn func(tx *sql.Tx) error) {
	t.Helper()
	if err := s.WithTx(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

func newSnapshot(t testing.TB, s *Store, entries []Entry) SnapshotNID {
	t.Helper()
	var nid SnapshotNID
	mustTx(t, s, func(tx *sql.Tx) (err error) {
		nid, err = s.NewSnapshot(context.Background(), tx, room, entries)
		return err
	})
	return nid
}

func apply(t testing.TB, s *Store, base SnapshotNID, changes []Entry) SnapshotNID {
	t.Helper()
	var nid SnapshotNID
	mustTx(t, s, func(tx *sql.Tx) (err error) {
		nid, err = s.Apply(context.Background(), tx, room, base, changes)
		return err
	})
	return nid
}

func checkEntries(t testing.TB, s *Store, q storage.Querier, nid SnapshotNID, want []Entry) {
	t.Helper()
	got, err := s.Entries(context.Background(), q, nid)
	if err != nil {
		t.Fatalf("Entries(%d): %v", nid, err)
	}
	if !equalEntries(got, want) {
		t.Fatalf("Entries(%d) = %v, want %v", nid, clip(got), clip(want))
	}
}

func clip(es []Entry) any {
	if len(es) > 10 {
		return fmt.Sprintf("%v ... (%d entries)", es[:10], len(es))
	}
	return es
}

func TestNIDs(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		tests := []struct {
			name    string
			assign  func(*Store, context.Context, *sql.Tx, string) (int64, error)
			lookup  func(*Store, context.Context, storage.Querier, string) (int64, bool, error)
			reverse func(*Store, context.Context, storage.Querier, []int64) (map[int64]string, error)
			values  []string
			fixed   map[string]int64
		}{
			{"event types", (*Store).TypeNID, (*Store).LookupTypeNID, (*Store).EventTypes,
				[]string{"m.room.message", "m.room.name", "org.example.ünïcode", "m.room.member"},
				map[string]int64{"m.room.create": TypeCreate, "m.room.member": TypeMember, "m.room.power_levels": TypePowerLevels,
					"m.room.join_rules": TypeJoinRules, "m.room.third_party_invite": TypeThirdPartyInvite,
					"m.room.history_visibility": TypeHistoryVisibility}},
			{"state keys", (*Store).StateKeyNID, (*Store).LookupStateKeyNID, (*Store).StateKeys,
				[]string{"@alice:example.org", "@bob:example.org", "", " "},
				map[string]int64{"": EmptyStateKey}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if _, ok, err := tt.lookup(s, ctx, nil, "never.seen"); ok || err != nil {
					t.Fatalf("lookup of an unknown name: ok=%v err=%v", ok, err)
				}
				got := map[string]int64{}
				mustTx(t, s, func(tx *sql.Tx) error {
					for _, v := range tt.values {
						nid, err := tt.assign(s, ctx, tx, v)
						if err != nil {
							return err
						}
						again, err := tt.assign(s, ctx, tx, v)
						if err != nil {
							return err
						}
						if nid <= 0 || again != nid {
							return fmt.Errorf("%q: nid %d then %d", v, nid, again)
						}
						got[v] = nid
					}
					return nil
				})
				seen := map[int64]string{}
				for v, nid := range got {
					if other, dup := seen[nid]; dup {
						t.Fatalf("%q and %q share nid %d", v, other, nid)
					}
					seen[nid] = v
				}
				for name, nid := range tt.fixed {
					if got, ok := got[name]; ok && got != nid {
						t.Fatalf("%q = %d, want the fixed %d", name, got, nid)
					}
					got[name] = nid
				}
				// Idempotent in a new transaction, and the same through a
				// fresh Store that must read everything from the database.
				for _, st := range []*Store{s, freshStore(t, db)} {
					var nids []int64
					for v, want := range got {
						nid, ok, err := tt.lookup(st, ctx, nil, v)
						if err != nil || !ok || nid != want {
							t.Fatalf("lookup %q = %d, %v, %v; want %d", v, nid, ok, err, want)
						}
						if err := db.WithTx(ctx, func(tx *sql.Tx) error {
							nid, err = tt.assign(st, ctx, tx, v)
							return err
						}); err != nil || nid != want {
							t.Fatalf("assign %q again = %d, %v; want %d", v, nid, err, want)
						}
						nids = append(nids, want)
					}
					names, err := tt.reverse(st, ctx, nil, append(nids, nids[0]))
					if err != nil {
						t.Fatal(err)
					}
					for v, nid := range got {
						if names[nid] != v {
							t.Fatalf("reverse(%d) = %q, want %q", nid, names[nid], v)
						}
					}
				}
				if _, err := tt.reverse(s, ctx, nil, []int64{1 << 40}); !errors.Is(err, ErrNIDNotFound) {
					t.Fatalf("reverse of an unknown nid: %v", err)
				}
				err := s.WithTx(ctx, func(tx *sql.Tx) error {
					_, err := tt.assign(s, ctx, tx, "bad\x00name")
					return err
				})
				if !errors.Is(err, ErrInvalidName) {
					t.Fatalf("NUL in a name: %v", err)
				}
			})
		}
	})
}

// The lookups and reverse lookups of a Store other than s must see what s
// wrote: the test above runs them through fresh Stores too. This one checks
// concurrency: every goroutine must get the same ID for the same name.
func TestNIDsConcurrent(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		const workers, names = 8, 25
		results := make([][]int64, workers)
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[w] = make([]int64, names)
				withTx := s.WithTx
				if w%2 == 1 {
					withTx = db.WithTx // untracked transactions too
				}
				for i := range names {
					// Each name in its own transaction, in a different
					// order per worker, to maximise collisions.
					j := (i + w*7) % names
					err := withTx(ctx, func(tx *sql.Tx) error {
						nid, err := s.StateKeyNID(ctx, tx, fmt.Sprintf("@user%d:example.org", j))
						results[w][j] = nid
						return err
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for w := 1; w < workers; w++ {
			if !slices.Equal(results[w], results[0]) {
				t.Fatalf("worker %d got %v, worker 0 got %v", w, results[w], results[0])
			}
		}
		if n := count(t, db, "roomserver_state_keys"); n != names+1 {
			t.Fatalf("%d state keys stored, want %d", n, names+1)
		}
	})
}

func TestNewSnapshotRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var big []Entry
	for i := range 500 {
		big = append(big, e(int64(1+rng.IntN(20)), int64(i+1), int64(1000+i)))
	}
	rng.Shuffle(len(big), func(i, j int) { big[i], big[j] = big[j], big[i] })
	tests := []struct {
		name    string
		entries []Entry
	}{
		{"empty", nil},
		{"one", []Entry{e(TypeCreate, EmptyStateKey, 1)}},
		{"unsorted", []Entry{e(9, 3, 30), e(1, 1, 10), e(9, 1, 20), e(TypeMember, 2, 40)}},
		{"large NIDs", []Entry{e(1<<40, 1<<50, 1<<62), e(1, 1<<62, 3)}},
		{"500 random", big},
	}
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				want := sortedCopy(tt.entries)
				var nid SnapshotNID
				for _, withTx := range []func(context.Context, func(*sql.Tx) error) error{s.WithTx, db.WithTx} {
					err := withTx(ctx, func(tx *sql.Tx) (err error) {
						nid, err = s.NewSnapshot(ctx, tx, room, tt.entries)
						if err != nil {
							return err
						}
						// Readable in the transaction that made it.
						checkEntries(t, s, tx, nid, want)
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
					if len(want) == 0 && nid != 0 {
						t.Fatalf("the empty state got nid %d", nid)
					}
					checkEntries(t, s, nil, nid, want)
					checkEntries(t, freshStore(t, db), nil, nid, want)
				}
			})
		}
		bad := []struct {
			name    string
			entries []Entry
			want    error
		}{
			{"duplicate key", []Entry{e(1, 1, 1), e(2, 2, 2), e(1, 1, 3)}, ErrDuplicateKey},
			{"event 0", []Entry{e(1, 1, 0)}, ErrInvalidEntry},
			{"type 0", []Entry{e(0, 1, 1)}, ErrInvalidEntry},
			{"negative state key", []Entry{e(1, -1, 1)}, ErrInvalidEntry},
		}
		for _, tt := range bad {
			t.Run(tt.name, func(t *testing.T) {
				err := s.WithTx(ctx, func(tx *sql.Tx) error {
					_, err := s.NewSnapshot(ctx, tx, room, tt.entries)
					return err
				})
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
			})
		}
	})
}

func TestApply(t *testing.T) {
	base := []Entry{e(TypeCreate, 1, 1), e(TypePowerLevels, 1, 2), e(TypeMember, 10, 3), e(TypeMember, 11, 4), e(TypeMember, 12, 5)}
	tests := []struct {
		name     string
		changes  []Entry
		wantBase bool  // the result is the base snapshot itself
		wantErr  error // nil: result must equal applyNaive
	}{
		{name: "no changes", changes: nil, wantBase: true},
		{name: "add", changes: []Entry{e(TypeMember, 13, 6)}},
		{name: "replace", changes: []Entry{e(TypeMember, 11, 7)}},
		{name: "remove", changes: []Entry{e(TypeMember, 10, 0)}},
		{name: "mixed", changes: []Entry{e(TypeMember, 10, 0), e(TypeMember, 11, 8), e(9, 1, 9), e(TypeMember, 99, 10)}},
		{name: "same event again", changes: []Entry{e(TypeMember, 11, 4)}, wantBase: true},
		{name: "remove absent", changes: []Entry{e(TypeMember, 404, 0)}, wantBase: true},
		{name: "no-op mix", changes: []Entry{e(TypeMember, 404, 0), e(TypeCreate, 1, 1)}, wantBase: true},
		{name: "remove all", changes: []Entry{e(TypeCreate, 1, 0), e(TypePowerLevels, 1, 0), e(TypeMember, 10, 0), e(TypeMember, 11, 0), e(TypeMember, 12, 0)}},
		{name: "duplicate change", changes: []Entry{e(TypeMember, 10, 0), e(TypeMember, 10, 9)}, wantErr: ErrDuplicateKey},
		{name: "negative event", changes: []Entry{e(TypeMember, 10, -1)}, wantErr: ErrInvalidEntry},
	}
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		b := newSnapshot(t, s, base)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before := count(t, db, "roomserver_state_snapshots")
				var got SnapshotNID
				err := s.WithTx(ctx, func(tx *sql.Tx) (err error) {
					got, err = s.Apply(ctx, tx, room, b, tt.changes)
					return err
				})
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("err = %v, want %v", err, tt.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				want := applyNaive(base, tt.changes)
				if tt.wantBase {
					if got != b {
						t.Fatalf("got snapshot %d, want the base %d", got, b)
					}
					if after := count(t, db, "roomserver_state_snapshots"); after != before {
						t.Fatalf("a no-op wrote %d snapshot rows", after-before)
					}
				}
				if len(want) == 0 && got != 0 {
					t.Fatalf("empty result has nid %d", got)
				}
				checkEntries(t, s, nil, got, want)
				checkEntries(t, freshStore(t, db), nil, got, want)
			})
		}
		t.Run("wrong room", func(t *testing.T) {
			err := s.WithTx(ctx, func(tx *sql.Tx) error {
				_, err := s.Apply(ctx, tx, room+1, b, []Entry{e(1, 2, 3)})
				return err
			})
			if !errors.Is(err, ErrWrongRoom) {
				t.Fatalf("err = %v", err)
			}
		})
		t.Run("unknown base", func(t *testing.T) {
			err := s.WithTx(ctx, func(tx *sql.Tx) error {
				_, err := s.Apply(ctx, tx, room, 1<<40, []Entry{e(1, 2, 3)})
				return err
			})
			if !errors.Is(err, ErrSnapshotNotFound) {
				t.Fatalf("err = %v", err)
			}
		})
		t.Run("from empty", func(t *testing.T) {
			got := apply(t, s, 0, []Entry{e(3, 4, 5)})
			checkEntries(t, s, nil, got, []Entry{e(3, 4, 5)})
		})
	})
}

// A caller applies events one by one in one transaction, each on the
// result of the last, before committing.
func TestApplyChainInOneTx(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		for _, tracked := range []bool{true, false} {
			t.Run(fmt.Sprintf("tracked=%v", tracked), func(t *testing.T) {
				s := newStore(t, db)
				withTx := db.WithTx
				if tracked {
					withTx = s.WithTx
				}
				base := members(300, 0)
				want := base
				var nids []SnapshotNID
				var wants [][]Entry
				err := withTx(ctx, func(tx *sql.Tx) error {
					cur, err := s.NewSnapshot(ctx, tx, room, base)
					if err != nil {
						return err
					}
					for i := range 20 {
						ch := []Entry{e(TypeMember, int64(i*13%300+1), int64(10000+i)), e(9, int64(i+1), int64(20000+i))}
						if i%3 == 0 {
							ch = append(ch, e(TypeMember, int64(i+100), 0))
						}
						if cur, err = s.Apply(ctx, tx, room, cur, ch); err != nil {
							return err
						}
						want = applyNaive(want, ch)
						checkEntries(t, s, tx, cur, want)
						nids, wants = append(nids, cur), append(wants, want)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				for i, nid := range nids {
					checkEntries(t, s, nil, nid, wants[i])
					checkEntries(t, freshStore(t, db), nil, nid, wants[i])
				}
			})
		}
	})
}

func TestLookupAndEntriesOfType(t *testing.T) {
	state := append(members(200, 0),
		e(TypeCreate, EmptyStateKey, 1001), e(TypePowerLevels, EmptyStateKey, 1002), e(TypeJoinRules, EmptyStateKey, 1003),
		e(50, 1, 1004), e(50, 7, 1005), e(51, 1, 1006))
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		nid := newSnapshot(t, s, state)
		lookups := []struct {
			name string
			keys []Key
			want []Entry
		}{
			{"none", nil, nil},
			{"auth state", []Key{{TypeMember, 42}, {TypeCreate, EmptyStateKey}, {TypePowerLevels, EmptyStateKey}},
				[]Entry{e(TypeCreate, EmptyStateKey, 1001), e(TypePowerLevels, EmptyStateKey, 1002), e(TypeMember, 42, 42)}},
			{"missing keys are absent", []Key{{TypeMember, 999}, {TypeThirdPartyInvite, 1}, {50, 7}},
				[]Entry{e(50, 7, 1005)}},
			{"duplicates", []Key{{50, 1}, {50, 1}}, []Entry{e(50, 1, 1004)}},
		}
		for _, tt := range lookups {
			t.Run("Lookup "+tt.name, func(t *testing.T) {
				for _, st := range []*Store{s, freshStore(t, db)} {
					got, err := st.Lookup(ctx, nil, nid, tt.keys)
					if err != nil {
						t.Fatal(err)
					}
					if !equalEntries(got, tt.want) {
						t.Fatalf("got %v, want %v", got, tt.want)
					}
				}
			})
		}
		byType := []struct {
			typ  int64
			want []Entry
		}{
			{TypeMember, members(200, 0)},
			{50, []Entry{e(50, 1, 1004), e(50, 7, 1005)}},
			{51, []Entry{e(51, 1, 1006)}},
			{TypeThirdPartyInvite, nil},
		}
		for _, tt := range byType {
			t.Run(fmt.Sprintf("EntriesOfType %d", tt.typ), func(t *testing.T) {
				got, err := s.EntriesOfType(ctx, nil, nid, tt.typ)
				if err != nil {
					t.Fatal(err)
				}
				if !equalEntries(got, tt.want) {
					t.Fatalf("got %v, want %v", clip(got), clip(tt.want))
				}
			})
		}
		if got, err := s.Lookup(ctx, nil, 0, []Key{{1, 1}}); err != nil || len(got) != 0 {
			t.Fatalf("Lookup in the empty state: %v, %v", got, err)
		}
	})
}

func TestDiff(t *testing.T) {
	base := members(500, 0)
	tests := []struct {
		name    string
		changes []Entry
	}{
		{"identical", nil},
		{"one join", []Entry{e(TypeMember, 501, 9001)}},
		{"one leave replaces", []Entry{e(TypeMember, 7, 9002)}},
		{"removal", []Entry{e(TypeMember, 8, 0)}},
		{"many", []Entry{e(TypeMember, 1, 0), e(TypeMember, 2, 9003), e(typeName, 1, 9004), e(TypeMember, 600, 9005), e(TypeMember, 300, 0)}},
	}
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		a := newSnapshot(t, s, base)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				b := apply(t, s, a, tt.changes)
				wantB := applyNaive(base, tt.changes)
				var wantRemoved, wantAdded []Entry
				wantRemoved, wantAdded = diffSorted(base, wantB, nil, nil)
				for _, st := range []*Store{s, freshStore(t, db)} {
					removed, added, err := st.Diff(ctx, nil, a, b)
					if err != nil {
						t.Fatal(err)
					}
					if !equalEntries(removed, wantRemoved) || !equalEntries(added, wantAdded) {
						t.Fatalf("Diff = -%v +%v, want -%v +%v", removed, added, wantRemoved, wantAdded)
					}
					// And backwards.
					removed, added, err = st.Diff(ctx, nil, b, a)
					if err != nil {
						t.Fatal(err)
					}
					if !equalEntries(removed, wantAdded) || !equalEntries(added, wantRemoved) {
						t.Fatalf("reverse Diff = -%v +%v", removed, added)
					}
				}
			})
		}
		t.Run("from empty", func(t *testing.T) {
			removed, added, err := s.Diff(ctx, nil, 0, a)
			if err != nil || len(removed) != 0 || !equalEntries(added, base) {
				t.Fatalf("Diff(0, a) = -%v +%v, %v", removed, clip(added), err)
			}
		})
	})
}

// typeName is a made-up type ID for tests (not one of the fixed ones).
const typeName = 40

// TestBlockSharing is the point of the design: one change to a large room
// writes one block and one snapshot row, whatever the room size.
func TestBlockSharing(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		state := append(members(10000, 0), e(TypeCreate, EmptyStateKey, 20001), e(TypePowerLevels, EmptyStateKey, 20002))
		base := newSnapshot(t, s, state)
		nonEmpty := map[int]bool{}
		for _, x := range state {
			nonEmpty[bucketOf(x.Key)] = true
		}
		blocks := count(t, db, "roomserver_state_blocks")
		if blocks != len(nonEmpty) {
			t.Fatalf("%d blocks for %d non-empty buckets", blocks, len(nonEmpty))
		}
		tests := []struct {
			name   string
			change Entry
		}{
			{"membership change", e(TypeMember, 4321, 30001)},
			{"new member", e(TypeMember, 10001, 30002)},
			{"leave", e(TypeMember, 17, 0)},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				blocks, snaps := count(t, db, "roomserver_state_blocks"), count(t, db, "roomserver_state_snapshots")
				next := apply(t, s, base, []Entry{tt.change})
				if d := count(t, db, "roomserver_state_blocks") - blocks; d != 1 {
					t.Fatalf("one change wrote %d blocks", d)
				}
				if d := count(t, db, "roomserver_state_snapshots") - snaps; d != 1 {
					t.Fatalf("one change wrote %d snapshots", d)
				}
				sb, err := freshStore(t, db).loadSnapshot(ctx, s.view(nil), base)
				if err != nil {
					t.Fatal(err)
				}
				sn, err := freshStore(t, db).loadSnapshot(ctx, s.view(nil), next)
				if err != nil {
					t.Fatal(err)
				}
				differ := 0
				for i := range sb.blocks {
					if sb.blocks[i] != sn.blocks[i] {
						differ++
					}
				}
				if differ != 1 {
					t.Fatalf("%d buckets differ", differ)
				}
				removed, added, err := s.Diff(ctx, nil, base, next)
				if err != nil {
					t.Fatal(err)
				}
				if len(removed)+len(added) != 1+btoi(tt.change.EventNID != 0 && tt.change.StateKeyNID <= 10000) {
					t.Fatalf("Diff = -%v +%v", removed, added)
				}
			})
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestBlockDedup(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		state := members(1000, 0)
		a := newSnapshot(t, s, state)
		blocks := count(t, db, "roomserver_state_blocks")

		// The same state again: a new snapshot row, no new block.
		a2 := newSnapshot(t, s, state)
		if a2 == a {
			t.Fatal("NewSnapshot returned an existing snapshot")
		}
		if n := count(t, db, "roomserver_state_blocks"); n != blocks {
			t.Fatalf("identical state wrote %d blocks", n-blocks)
		}

		// A change and its revert: the revert reuses the original block.
		b := apply(t, s, a, []Entry{e(TypeMember, 5, 7777)})
		if n := count(t, db, "roomserver_state_blocks"); n != blocks+1 {
			t.Fatalf("change wrote %d blocks", n-blocks-1)
		}
		c := apply(t, s, b, []Entry{e(TypeMember, 5, 5)})
		if n := count(t, db, "roomserver_state_blocks"); n != blocks+1 {
			t.Fatalf("revert wrote %d blocks", n-blocks-1)
		}
		sa, _ := s.loadSnapshot(ctx, s.view(nil), a)
		sc, _ := s.loadSnapshot(ctx, s.view(nil), c)
		if sa.blocks != sc.blocks {
			t.Fatal("the reverted snapshot does not share every block with the original")
		}
		// The same dedup through a transaction that did not come from
		// Store.WithTx, and within one transaction.
		err := db.WithTx(ctx, func(tx *sql.Tx) error {
			x, err := s.Apply(ctx, tx, room, a, []Entry{e(TypeMember, 6, 8888)})
			if err != nil {
				return err
			}
			y, err := s.Apply(ctx, tx, room, x, []Entry{e(TypeMember, 6, 6)})
			if err != nil {
				return err
			}
			sy, err := s.loadSnapshot(ctx, s.view(tx), y)
			if err != nil {
				return err
			}
			if sy.blocks != sa.blocks {
				return errors.New("revert in one transaction did not reuse the blocks")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, "roomserver_state_blocks"); n != blocks+2 {
			t.Fatalf("%d blocks, want %d", n, blocks+2)
		}
	})
}

// TestRollback checks that nothing written by a transaction that rolls back
// stays in the caches. On SQLite the IDs of the rolled-back rows are handed
// out again, so a cached leftover would show as wrong content.
func TestRollback(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		for _, tracked := range []bool{true, false} {
			t.Run(fmt.Sprintf("tracked=%v", tracked), func(t *testing.T) {
				s := newStore(t, db)
				withTx := db.WithTx
				if tracked {
					withTx = s.WithTx
				}
				base := newSnapshot(t, s, members(100, 0))
				ghostType := fmt.Sprintf("org.example.ghost.%v", tracked)
				ghostEntries := []Entry{e(TypeMember, 1, 5555), e(77, 1, 5556)}
				var ghostNID int64
				var ghostSnap, ghostApply SnapshotNID
				err := withTx(ctx, func(tx *sql.Tx) (err error) {
					if ghostNID, err = s.TypeNID(ctx, tx, ghostType); err != nil {
						return err
					}
					// Read it back every way inside the transaction.
					if again, err := s.TypeNID(ctx, tx, ghostType); err != nil || again != ghostNID {
						return fmt.Errorf("TypeNID again: %d, %v", again, err)
					}
					if nid, ok, err := s.LookupTypeNID(ctx, tx, ghostType); err != nil || !ok || nid != ghostNID {
						return fmt.Errorf("LookupTypeNID in tx: %d, %v, %v", nid, ok, err)
					}
					if names, err := s.EventTypes(ctx, tx, []int64{ghostNID}); err != nil || names[ghostNID] != ghostType {
						return fmt.Errorf("EventTypes in tx: %v, %v", names, err)
					}
					if ghostSnap, err = s.NewSnapshot(ctx, tx, room, ghostEntries); err != nil {
						return err
					}
					if ghostApply, err = s.Apply(ctx, tx, room, base, []Entry{e(TypeMember, 3, 6666)}); err != nil {
						return err
					}
					checkEntries(t, s, tx, ghostSnap, sortedCopy(ghostEntries))
					if _, err := s.Lookup(ctx, tx, ghostApply, []Key{{TypeMember, 3}}); err != nil {
						return err
					}
					return errStop
				})
				if !errors.Is(err, errStop) {
					t.Fatalf("err = %v", err)
				}
				if _, ok, err := s.LookupTypeNID(ctx, nil, ghostType); ok || err != nil {
					t.Fatalf("rolled-back type is visible: %v, %v", ok, err)
				}
				if _, err := s.EventTypes(ctx, nil, []int64{ghostNID}); !errors.Is(err, ErrNIDNotFound) {
					t.Fatalf("rolled-back type NID: %v", err)
				}
				for _, nid := range []SnapshotNID{ghostSnap, ghostApply} {
					if _, err := s.Entries(ctx, nil, nid); !errors.Is(err, ErrSnapshotNotFound) {
						t.Fatalf("rolled-back snapshot %d: %v", nid, err)
					}
				}

				// Do it again with other content, and commit.
				realType := ghostType + ".real"
				realEntries := []Entry{e(TypeMember, 1, 7777), e(88, 2, 7778)}
				var realNID int64
				var realSnap, realApply SnapshotNID
				mustTx(t, s, func(tx *sql.Tx) (err error) {
					if realNID, err = s.TypeNID(ctx, tx, realType); err != nil {
						return err
					}
					if realSnap, err = s.NewSnapshot(ctx, tx, room, realEntries); err != nil {
						return err
					}
					realApply, err = s.Apply(ctx, tx, room, base, []Entry{e(TypeMember, 3, 8888)})
					return err
				})
				if db.Dialect == storage.SQLite && (realNID != ghostNID || realSnap != ghostSnap || realApply != ghostApply) {
					// Not a failure of the Store, but then this test
					// does not test what it means to.
					t.Fatalf("SQLite did not reuse the rolled-back IDs: %d/%d %d/%d %d/%d",
						realNID, ghostNID, realSnap, ghostSnap, realApply, ghostApply)
				}
				for _, st := range []*Store{s, freshStore(t, db)} {
					if names, err := st.EventTypes(ctx, nil, []int64{realNID}); err != nil || names[realNID] != realType {
						t.Fatalf("EventTypes(%d) = %v, %v", realNID, names, err)
					}
					if _, ok, _ := st.LookupTypeNID(ctx, nil, ghostType); ok {
						t.Fatal("the rolled-back type came back")
					}
					checkEntries(t, st, nil, realSnap, sortedCopy(realEntries))
					want := applyNaive(members(100, 0), []Entry{e(TypeMember, 3, 8888)})
					checkEntries(t, st, nil, realApply, want)
				}
				// The ghost type can be assigned for real now.
				var nid int64
				mustTx(t, s, func(tx *sql.Tx) (err error) {
					nid, err = s.TypeNID(ctx, tx, ghostType)
					return err
				})
				if names, err := freshStore(t, db).EventTypes(ctx, nil, []int64{nid}); err != nil || names[nid] != ghostType {
					t.Fatalf("ghost type assigned for real: %v, %v", names, err)
				}
			})
		}
	})
}

// TestCache checks that committed state is read from memory: what a
// Store.WithTx transaction wrote is cached at commit, other reads on first
// use.
func TestCache(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		keys := []Key{{TypeMember, 5}, {TypeCreate, EmptyStateKey}, {TypeMember, 9999}}
		base := newSnapshot(t, s, append(members(10000, 0), e(TypeCreate, EmptyStateKey, 1)))
		next := apply(t, s, base, []Entry{e(TypeMember, 5, 50000)})
		reads := s.dbReads.Load()
		for _, nid := range []SnapshotNID{base, next} {
			if _, err := s.Lookup(ctx, nil, nid, keys); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Entries(ctx, nil, nid); err != nil {
				t.Fatal(err)
			}
		}
		if d := s.dbReads.Load() - reads; d != 0 {
			t.Fatalf("reading committed, cached state took %d queries", d)
		}

		// Written in a transaction the Store does not know: read once.
		var other SnapshotNID
		if err := db.WithTx(ctx, func(tx *sql.Tx) (err error) {
			other, err = s.Apply(ctx, tx, room, next, []Entry{e(TypeMember, 6, 50001)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		reads = s.dbReads.Load()
		for range 3 {
			got, err := s.Lookup(ctx, nil, other, keys)
			if err != nil {
				t.Fatal(err)
			}
			if want := []Entry{e(TypeCreate, EmptyStateKey, 1), e(TypeMember, 5, 50000), e(TypeMember, 9999, 9999)}; !equalEntries(got, want) {
				t.Fatalf("got %v", got)
			}
		}
		if d := s.dbReads.Load() - reads; d > 2 {
			t.Fatalf("three lookups took %d queries, want at most 2 (snapshot and a block)", d)
		}
	})
}

func TestCorruptStoredBlock(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		s := newStore(t, db)
		nid := newSnapshot(t, s, []Entry{e(1, 1, 1)})
		// Same length, other content: the hash check catches it.
		if _, err := db.Writer().ExecContext(ctx, "UPDATE roomserver_state_blocks SET entries = $1", encodeBlock(bucketOf(Key{1, 1}), []Entry{e(1, 1, 2)})); err != nil {
			t.Fatal(err)
		}
		if _, err := freshStore(t, db).Entries(ctx, nil, nid); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("changed block: %v", err)
		}
		if _, err := db.Writer().ExecContext(ctx, "UPDATE roomserver_state_snapshots SET blocks = $1", []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if _, err := freshStore(t, db).Entries(ctx, nil, nid); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated snapshot: %v", err)
		}
	})
}

func TestEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		bucket := rng.IntN(numBuckets)
		var es []Entry
		for len(es) < 1+rng.IntN(300) {
			k := Key{int64(1 + rng.IntN(5)), 1 + rng.Int64N(1<<uint(1+rng.IntN(62)))}
			if bucketOf(k) == bucket {
				es = append(es, Entry{k, 1 + rng.Int64N(1<<40)})
			}
		}
		slices.SortFunc(es, compareEntries)
		es = slices.CompactFunc(es, func(a, b Entry) bool { return a.Key == b.Key })
		data := encodeBlock(bucket, es)
		b, got, err := decodeBlock(data)
		if err != nil || b != bucket || !slices.Equal(got, es) {
			t.Fatalf("round trip: bucket %d/%d, err %v", b, bucket, err)
		}
	}
	var blocks [numBuckets]int64
	blocks[0], blocks[5], blocks[63] = 1, 1<<40, 300
	got, err := decodeSnapshot(encodeSnapshot(&blocks))
	if err != nil || got != blocks {
		t.Fatalf("snapshot round trip: %v", err)
	}

	// A valid one-entry block to mutate.
	k := Key{1, 1}
	valid := encodeBlock(bucketOf(k), []Entry{{k, 1}})
	corruptBlocks := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"format", append([]byte{2}, valid[1:]...)},
		{"bucket out of range", append([]byte{1, 64}, valid[2:]...)},
		{"wrong bucket", append([]byte{1, byte(bucketOf(k) + 1)}, valid[2:]...)},
		{"no entries", []byte{1, 0, 0}},
		{"count too large", []byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1, 1}},
		{"truncated", valid[:len(valid)-1]},
		{"trailing", append(slices.Clone(valid), 0)},
		{"zero event", []byte{1, valid[1], 1, 1, 1, 0}},
		{"first type delta 0", []byte{1, valid[1], 1, 0, 1, 1}},
		{"non-minimal varint", []byte{1, valid[1], 1, 0x81, 0x00, 1, 1}},
		{"varint overflow", []byte{1, valid[1], 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 1}},
		{"type over int64", []byte{1, valid[1], 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 1}},
	}
	for _, tt := range corruptBlocks {
		if _, _, err := decodeBlock(tt.data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("block %s: err = %v", tt.name, err)
		}
	}
	validSnap := encodeSnapshot(&blocks)
	corruptSnaps := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"short", validSnap[:8]},
		{"format", append([]byte{9}, validSnap[1:]...)},
		{"no blocks", []byte{1, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"truncated", validSnap[:len(validSnap)-1]},
		{"trailing", append(slices.Clone(validSnap), 1)},
		{"block 0", []byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range corruptSnaps {
		if _, err := decodeSnapshot(tt.data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("snapshot %s: err = %v", tt.name, err)
		}
	}
}

func TestMergeSorted(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, nLists := range []int{0, 1, 2, 3, 5, 63, 64} {
		// Keys dealt at random over the lists, so they interleave; each
		// list stays sorted because keys are dealt in order.
		lists := make([][]Entry, nLists)
		var all []Entry
		for sk := int64(1); nLists > 0 && sk <= 500; sk++ {
			x := e(1+sk%3, sk, sk)
			all = append(all, x)
			i := rng.IntN(nLists)
			lists[i] = append(lists[i], x)
		}
		for i := range lists {
			slices.SortFunc(lists[i], compareEntries)
		}
		got := mergeSorted(lists)
		if !equalEntries(got, sortedCopy(all)) {
			t.Fatalf("%d lists: got %v", nLists, clip(got))
		}
	}
}
