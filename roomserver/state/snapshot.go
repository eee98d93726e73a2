package state

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/plexus-chat/plexus/storage"
)

// block is the decoded content of one stored block: the sorted entries of
// one bucket. Shared through the caches, so never modified.
type block struct {
	bucket  int
	entries []Entry
}

// snapshot is the decoded content of one stored snapshot: its room and the
// block of each bucket (0 for an empty bucket). Never modified once built.
type snapshot struct {
	room   int64
	blocks [numBuckets]int64
}

var emptySnapshot = &snapshot{}

// blockWeight is what a cached block counts against BlockCacheEntries.
func blockWeight(b *block) int { return len(b.entries) + 4 }

func (s *Store) cacheBlock(nid int64, b *block) { s.blocks.add(nid, b, blockWeight(b)) }

// NewSnapshot stores the state given as a full list of entries (any order,
// unique keys, all IDs > 0) and returns its ID; no entries is the empty
// state, 0. Blocks identical to stored ones are reused.
func (s *Store) NewSnapshot(ctx context.Context, tx *sql.Tx, roomNID int64, entries []Entry) (SnapshotNID, error) {
	if tx == nil {
		return 0, errors.New("new snapshot: no transaction")
	}
	sorted, err := sortedEntries(entries, false)
	if err != nil {
		return 0, err
	}
	if len(sorted) == 0 {
		return 0, nil
	}
	var byBucket [numBuckets][]Entry
	for _, e := range sorted {
		b := bucketOf(e.Key)
		byBucket[b] = append(byBucket[b], e)
	}
	v := s.view(tx)
	sp := &snapshot{room: roomNID}
	for b, es := range byBucket {
		if len(es) == 0 {
			continue
		}
		if sp.blocks[b], err = s.storeBlock(ctx, v, b, es); err != nil {
			return 0, err
		}
	}
	return s.storeSnapshot(ctx, v, sp)
}

// Apply stores the state that results from applying changes to base and
// returns its ID. A change with EventNID 0 removes its key (absent keys are
// fine); any other adds or replaces it. Only the buckets whose content
// changes get new blocks; the others are shared with base. If nothing
// changes, base itself is returned and nothing is written; if nothing is
// left, the result is 0. base must be 0 or a snapshot of roomNID, possibly
// one made earlier in the same transaction.
func (s *Store) Apply(ctx context.Context, tx *sql.Tx, roomNID int64, base SnapshotNID, changes []Entry) (SnapshotNID, error) {
	if tx == nil {
		return 0, errors.New("apply state: no transaction")
	}
	sorted, err := sortedEntries(changes, true)
	if err != nil {
		return 0, err
	}
	v := s.view(tx)
	old, err := s.loadSnapshot(ctx, v, base)
	if err != nil {
		return 0, err
	}
	if base != 0 && old.room != roomNID {
		return 0, fmt.Errorf("%w: snapshot %d is of room %d, not %d", ErrWrongRoom, base, old.room, roomNID)
	}
	if len(sorted) == 0 {
		return base, nil
	}
	var byBucket [numBuckets][]Entry
	var refs []blockRef
	for _, e := range sorted {
		b := bucketOf(e.Key)
		if len(byBucket[b]) == 0 && old.blocks[b] != 0 {
			refs = append(refs, blockRef{bucket: b, nid: old.blocks[b]})
		}
		byBucket[b] = append(byBucket[b], e)
	}
	oldBlocks, err := s.loadBlocks(ctx, v, refs)
	if err != nil {
		return 0, err
	}
	next := &snapshot{room: roomNID, blocks: old.blocks}
	changed := false
	for b, ch := range byBucket {
		if len(ch) == 0 {
			continue
		}
		var cur []Entry
		if blk := oldBlocks[old.blocks[b]]; blk != nil {
			cur = blk.entries
		}
		merged, same := merge(cur, ch)
		if same {
			continue
		}
		changed = true
		if len(merged) == 0 {
			next.blocks[b] = 0
			continue
		}
		if next.blocks[b], err = s.storeBlock(ctx, v, b, merged); err != nil {
			return 0, err
		}
	}
	if !changed {
		return base, nil
	}
	if next.blocks == ([numBuckets]int64{}) {
		return 0, nil
	}
	return s.storeSnapshot(ctx, v, next)
}

// sortedEntries validates entries and returns them sorted by key in a new
// slice. For changes, EventNID 0 (remove) is allowed.
func sortedEntries(entries []Entry, changes bool) ([]Entry, error) {
	out := slices.Clone(entries)
	for _, e := range out {
		if e.TypeNID <= 0 || e.StateKeyNID <= 0 || e.EventNID < 0 || (e.EventNID == 0 && !changes) {
			return nil, fmt.Errorf("%w: %+v", ErrInvalidEntry, e)
		}
	}
	slices.SortFunc(out, compareEntries)
	for i := 1; i < len(out); i++ {
		if out[i].Key == out[i-1].Key {
			return nil, fmt.Errorf("%w: type %d, state key %d", ErrDuplicateKey, out[i].TypeNID, out[i].StateKeyNID)
		}
	}
	return out, nil
}

// merge applies sorted changes to sorted entries. It returns a new slice,
// or same = true when nothing changes.
func merge(cur, changes []Entry) (merged []Entry, same bool) {
	merged = make([]Entry, 0, len(cur)+len(changes))
	same = true
	i := 0
	for _, c := range changes {
		for i < len(cur) && cur[i].Key.less(c.Key) {
			merged = append(merged, cur[i])
			i++
		}
		if i < len(cur) && cur[i].Key == c.Key {
			if c.EventNID != cur[i].EventNID {
				same = false
			}
			if c.EventNID != 0 {
				merged = append(merged, c)
			}
			i++
			continue
		}
		if c.EventNID != 0 {
			merged = append(merged, c)
			same = false
		}
	}
	merged = append(merged, cur[i:]...)
	return merged, same
}

// storeBlock stores the sorted entries of one bucket, or finds the identical
// stored block, and returns its ID.
func (s *Store) storeBlock(ctx context.Context, v view, bucket int, entries []Entry) (int64, error) {
	data := encodeBlock(bucket, entries)
	hash := sha256.Sum256(data)
	blk := &block{bucket: bucket, entries: entries}
	var nid int64
	err := v.q.QueryRowContext(ctx, sqlInsertBlock, hash[:], data).Scan(&nid)
	if err == nil {
		if v.ts != nil {
			v.ts.addBlock(nid, blk)
		}
		return nid, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		v.ts.markBroken()
		return 0, fmt.Errorf("store state block: %w", err)
	}
	// An identical block exists: committed, or written earlier by this
	// transaction.
	if err := v.q.QueryRowContext(ctx, sqlSelectBlockNID, hash[:]).Scan(&nid); err != nil {
		return 0, fmt.Errorf("read state block by hash: %w", err)
	}
	if v.ts != nil && v.ts.block(nid) == nil && v.cacheable() {
		// Committed, with the very content we hold (same SHA-256).
		s.cacheBlock(nid, blk)
	}
	return nid, nil
}

func (s *Store) storeSnapshot(ctx context.Context, v view, sp *snapshot) (SnapshotNID, error) {
	var nid SnapshotNID
	err := v.q.QueryRowContext(ctx, sqlInsertSnapshot, sp.room, encodeSnapshot(&sp.blocks)).Scan(&nid)
	if err != nil {
		v.ts.markBroken()
		return 0, fmt.Errorf("store state snapshot: %w", err)
	}
	if v.ts != nil {
		v.ts.addSnapshot(nid, sp)
	}
	return nid, nil
}

// loadSnapshot returns a snapshot from the caches or the database.
func (s *Store) loadSnapshot(ctx context.Context, v view, nid SnapshotNID) (*snapshot, error) {
	if nid == 0 {
		return emptySnapshot, nil
	}
	if nid < 0 {
		return nil, fmt.Errorf("%w: %d", ErrSnapshotNotFound, nid)
	}
	if sp, ok := s.snapshots.get(nid); ok {
		return sp, nil
	}
	if v.ts != nil {
		if sp := v.ts.snapshot(nid); sp != nil {
			return sp, nil
		}
	}
	s.dbReads.Add(1)
	var room int64
	var data []byte
	err := v.q.QueryRowContext(ctx, sqlSelectSnapshot, int64(nid)).Scan(&room, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", ErrSnapshotNotFound, nid)
	}
	if err != nil {
		return nil, fmt.Errorf("read state snapshot %d: %w", nid, err)
	}
	blocks, err := decodeSnapshot(data)
	if err != nil {
		return nil, fmt.Errorf("state snapshot %d: %w", nid, err)
	}
	sp := &snapshot{room: room, blocks: blocks}
	if v.cacheable() {
		s.snapshots.add(nid, sp, 1)
	}
	return sp, nil
}

// blockRef names the block expected in a bucket.
type blockRef struct {
	bucket int
	nid    int64
}

// loadBlocks returns the blocks that refs name, by ID, reading all those
// not cached in one query. It checks that each block holds the bucket it is
// expected in and that its bytes match their hash.
func (s *Store) loadBlocks(ctx context.Context, v view, refs []blockRef) (map[int64]*block, error) {
	out := make(map[int64]*block, len(refs))
	want := make(map[int64]int, len(refs))
	var missing []any
	for _, r := range refs {
		if b, ok := want[r.nid]; ok {
			if b != r.bucket {
				return nil, corrupt("block %d used for buckets %d and %d", r.nid, b, r.bucket)
			}
			continue
		}
		want[r.nid] = r.bucket
		blk, ok := s.blocks.get(r.nid)
		if !ok && v.ts != nil {
			blk = v.ts.block(r.nid)
			ok = blk != nil
		}
		if ok {
			if blk.bucket != r.bucket {
				return nil, corrupt("block %d is of bucket %d, used for %d", r.nid, blk.bucket, r.bucket)
			}
			out[r.nid] = blk
			continue
		}
		missing = append(missing, r.nid)
	}
	if len(missing) == 0 {
		return out, nil
	}
	s.dbReads.Add(1)
	cacheable := v.cacheable()
	rows, err := v.q.QueryContext(ctx, inList(sqlSelectBlocks, len(missing)), missing...)
	if err != nil {
		return nil, fmt.Errorf("read state blocks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var nid int64
		var hash, data []byte
		if err := rows.Scan(&nid, &hash, &data); err != nil {
			return nil, fmt.Errorf("read state blocks: %w", err)
		}
		sum := sha256.Sum256(data)
		if !bytes.Equal(sum[:], hash) {
			return nil, corrupt("block %d does not match its hash", nid)
		}
		bucket, entries, err := decodeBlock(data)
		if err != nil {
			return nil, fmt.Errorf("state block %d: %w", nid, err)
		}
		if wb, ok := want[nid]; !ok || wb != bucket {
			return nil, corrupt("block %d is of bucket %d, used for %d", nid, bucket, wb)
		}
		blk := &block{bucket: bucket, entries: entries}
		out[nid] = blk
		if cacheable {
			s.cacheBlock(nid, blk)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read state blocks: %w", err)
	}
	for _, nid := range missing {
		if out[nid.(int64)] == nil {
			return nil, corrupt("block %d is missing", nid)
		}
	}
	return out, nil
}

// allBlocks loads every block of a snapshot.
func (s *Store) allBlocks(ctx context.Context, v view, sp *snapshot) (map[int64]*block, error) {
	refs := make([]blockRef, 0, numBuckets)
	for b, nid := range sp.blocks {
		if nid != 0 {
			refs = append(refs, blockRef{bucket: b, nid: nid})
		}
	}
	return s.loadBlocks(ctx, v, refs)
}

// Entries returns the whole state of a snapshot sorted by key, reading
// through q (nil: committed data only; pass the transaction to read a
// snapshot it has made).
func (s *Store) Entries(ctx context.Context, q storage.Querier, nid SnapshotNID) ([]Entry, error) {
	v := s.view(q)
	sp, err := s.loadSnapshot(ctx, v, nid)
	if err != nil {
		return nil, err
	}
	blocks, err := s.allBlocks(ctx, v, sp)
	if err != nil {
		return nil, err
	}
	lists := make([][]Entry, 0, len(blocks))
	for _, b := range blocks {
		lists = append(lists, b.entries)
	}
	return mergeSorted(lists), nil
}

// Lookup returns the entries of the given keys that the snapshot holds,
// sorted by key; absent keys are left out. It reads only the blocks of the
// buckets those keys fall in.
func (s *Store) Lookup(ctx context.Context, q storage.Querier, nid SnapshotNID, keys []Key) ([]Entry, error) {
	v := s.view(q)
	sp, err := s.loadSnapshot(ctx, v, nid)
	if err != nil {
		return nil, err
	}
	var refs []blockRef
	var seen uint64
	for _, k := range keys {
		b := bucketOf(k)
		if sp.blocks[b] != 0 && seen&(1<<b) == 0 {
			seen |= 1 << b
			refs = append(refs, blockRef{bucket: b, nid: sp.blocks[b]})
		}
	}
	blocks, err := s.loadBlocks(ctx, v, refs)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(keys))
	for _, k := range keys {
		blk := blocks[sp.blocks[bucketOf(k)]]
		if blk == nil {
			continue
		}
		if i, ok := slices.BinarySearchFunc(blk.entries, k, func(e Entry, k Key) int { return e.Key.Compare(k) }); ok {
			out = append(out, blk.entries[i])
		}
	}
	slices.SortFunc(out, compareEntries)
	return slices.CompactFunc(out, func(a, b Entry) bool { return a.Key == b.Key }), nil
}

// EntriesOfType returns the entries of one event type, sorted by state key.
// A type spreads over all buckets, so this reads the whole snapshot (from
// the cache, normally).
func (s *Store) EntriesOfType(ctx context.Context, q storage.Querier, nid SnapshotNID, typeNID int64) ([]Entry, error) {
	v := s.view(q)
	sp, err := s.loadSnapshot(ctx, v, nid)
	if err != nil {
		return nil, err
	}
	blocks, err := s.allBlocks(ctx, v, sp)
	if err != nil {
		return nil, err
	}
	var lists [][]Entry
	for _, b := range blocks {
		i, _ := slices.BinarySearchFunc(b.entries, typeNID, func(e Entry, t int64) int {
			if e.TypeNID < t {
				return -1
			}
			return 1 // the first entry of the type, if any, is at i
		})
		j := i
		for j < len(b.entries) && b.entries[j].TypeNID == typeNID {
			j++
		}
		if j > i {
			lists = append(lists, b.entries[i:j])
		}
	}
	return mergeSorted(lists), nil
}

// mergeSorted merges lists of entries, each sorted by key and with keys
// unique across lists, into one new sorted slice. Merging the (up to 64)
// sorted blocks pairwise is several times faster than sorting.
func mergeSorted(lists [][]Entry) []Entry {
	n := 0
	for _, l := range lists {
		n += len(l)
	}
	if n == 0 {
		return nil
	}
	if len(lists) == 1 {
		return slices.Clone(lists[0])
	}
	// Each pass merges neighbours from src into dst; the two buffers swap.
	src, dst := make([]Entry, 0, n), make([]Entry, n)
	bounds := make([]int, 0, len(lists)+1)
	for _, l := range lists {
		bounds = append(bounds, len(src))
		src = append(src, l...)
	}
	bounds = append(bounds, n)
	for len(bounds) > 2 {
		next := bounds[:0:0]
		for i := 0; i+1 < len(bounds); i += 2 {
			lo := bounds[i]
			next = append(next, lo)
			if i+2 >= len(bounds) {
				copy(dst[lo:], src[lo:bounds[i+1]])
				continue
			}
			mergeTwo(dst[lo:bounds[i+2]], src[lo:bounds[i+1]], src[bounds[i+1]:bounds[i+2]])
		}
		next = append(next, n)
		bounds = next
		src, dst = dst, src
	}
	return src
}

func mergeTwo(dst, a, b []Entry) {
	i, j, k := 0, 0, 0
	for i < len(a) && j < len(b) {
		if a[i].Key.less(b[j].Key) {
			dst[k] = a[i]
			i++
		} else {
			dst[k] = b[j]
			j++
		}
		k++
	}
	k += copy(dst[k:], a[i:])
	copy(dst[k:], b[j:])
}

// Diff returns what changes from snapshot a to snapshot b: removed holds
// the entries of a that b does not have (a key gone, or now held by another
// event), added the entries of b that a does not have; both sorted by key.
// Buckets whose block is the same in both are skipped without reading them.
func (s *Store) Diff(ctx context.Context, q storage.Querier, a, b SnapshotNID) (removed, added []Entry, err error) {
	if a == b {
		return nil, nil, nil
	}
	v := s.view(q)
	sa, err := s.loadSnapshot(ctx, v, a)
	if err != nil {
		return nil, nil, err
	}
	sb, err := s.loadSnapshot(ctx, v, b)
	if err != nil {
		return nil, nil, err
	}
	var refs []blockRef
	for i := range numBuckets {
		if sa.blocks[i] == sb.blocks[i] {
			continue
		}
		for _, nid := range []int64{sa.blocks[i], sb.blocks[i]} {
			if nid != 0 {
				refs = append(refs, blockRef{bucket: i, nid: nid})
			}
		}
	}
	blocks, err := s.loadBlocks(ctx, v, refs)
	if err != nil {
		return nil, nil, err
	}
	entriesOf := func(nid int64) []Entry {
		if blk := blocks[nid]; blk != nil {
			return blk.entries
		}
		return nil
	}
	for i := range numBuckets {
		if sa.blocks[i] == sb.blocks[i] {
			continue
		}
		removed, added = diffSorted(entriesOf(sa.blocks[i]), entriesOf(sb.blocks[i]), removed, added)
	}
	slices.SortFunc(removed, compareEntries)
	slices.SortFunc(added, compareEntries)
	return removed, added, nil
}

// diffSorted appends to removed and added the difference of two sorted
// entry lists.
func diffSorted(x, y, removed, added []Entry) ([]Entry, []Entry) {
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case j == len(y) || (i < len(x) && x[i].Key.less(y[j].Key)):
			removed = append(removed, x[i])
			i++
		case i == len(x) || y[j].Key.less(x[i].Key):
			added = append(added, y[j])
			j++
		default:
			if x[i].EventNID != y[j].EventNID {
				removed = append(removed, x[i])
				added = append(added, y[j])
			}
			i++
			j++
		}
	}
	return removed, added
}
