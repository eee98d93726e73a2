package state

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// numBuckets is the number of buckets a snapshot is split into. It is part
// of the stored format: changing it (or bucketOf) needs a new format.
const numBuckets = 64

// Format versions, the first byte of every stored block and snapshot.
const (
	blockFormat    = 1
	snapshotFormat = 1
)

// bucketOf places a key in one of the numBuckets buckets. It is a fixed
// 64-bit mix (the splitmix64 finaliser) of both numeric IDs, so the members
// of a large room spread evenly over the buckets. The result is stored
// implicitly in every block and must never change.
func bucketOf(k Key) int {
	x := uint64(k.TypeNID)*0x9e3779b97f4a7c15 ^ uint64(k.StateKeyNID)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return int(x & (numBuckets - 1))
}

// encodeBlock encodes the entries of one bucket. entries must be non-empty,
// sorted by key with unique keys, and valid (all IDs > 0). The encoding is
// canonical: equal entries always give equal bytes, so the SHA-256 of the
// bytes identifies the content.
//
//	byte    format (1)
//	byte    bucket (0..63)
//	uvarint number of entries (>= 1)
//	per entry, in key order:
//	  uvarint type delta: TypeNID minus the previous entry's (0 before the first)
//	  uvarint state key: if the type delta is 0, StateKeyNID minus the
//	          previous entry's (>= 1); otherwise StateKeyNID itself (>= 1)
//	  uvarint EventNID (>= 1)
//
// Every uvarint is minimal (no redundant 0x80 continuation bytes).
func encodeBlock(bucket int, entries []Entry) []byte {
	buf := make([]byte, 0, 4+len(entries)*7)
	buf = append(buf, blockFormat, byte(bucket))
	buf = binary.AppendUvarint(buf, uint64(len(entries)))
	var prev Key
	for _, e := range entries {
		if e.TypeNID == prev.TypeNID {
			buf = binary.AppendUvarint(buf, 0)
			buf = binary.AppendUvarint(buf, uint64(e.StateKeyNID-prev.StateKeyNID))
		} else {
			buf = binary.AppendUvarint(buf, uint64(e.TypeNID-prev.TypeNID))
			buf = binary.AppendUvarint(buf, uint64(e.StateKeyNID))
		}
		buf = binary.AppendUvarint(buf, uint64(e.EventNID))
		prev = e.Key
	}
	return buf
}

// minEntrySize is the fewest bytes an encoded entry takes (three uvarints).
const minEntrySize = 3

// decodeBlock decodes and checks a block. Anything that encodeBlock could
// not have produced is an error wrapping ErrCorrupt; it never panics and
// never allocates more than the input justifies.
func decodeBlock(data []byte) (bucket int, entries []Entry, err error) {
	r := byteReader{data: data}
	if len(data) < 2 {
		return 0, nil, corrupt("block: %d bytes", len(data))
	}
	if data[0] != blockFormat {
		return 0, nil, corrupt("block: unknown format %d", data[0])
	}
	if data[1] >= numBuckets {
		return 0, nil, corrupt("block: bucket %d", data[1])
	}
	bucket = int(data[1])
	r.off = 2
	n, err := r.uvarint()
	if err != nil {
		return 0, nil, err
	}
	if n == 0 {
		return 0, nil, corrupt("block: no entries")
	}
	if n > uint64(len(data)-r.off)/minEntrySize {
		return 0, nil, corrupt("block: %d entries in %d bytes", n, len(data))
	}
	entries = make([]Entry, 0, n)
	var prev Key
	for i := uint64(0); i < n; i++ {
		td, err := r.uvarint()
		if err != nil {
			return 0, nil, err
		}
		sk, err := r.uvarint()
		if err != nil {
			return 0, nil, err
		}
		ev, err := r.uvarint()
		if err != nil {
			return 0, nil, err
		}
		var k Key
		if td == 0 {
			if i == 0 {
				return 0, nil, corrupt("block: first entry has type delta 0")
			}
			if sk == 0 || sk > uint64(math.MaxInt64-prev.StateKeyNID) {
				return 0, nil, corrupt("block: entry %d: bad state key delta %d", i, sk)
			}
			k = Key{TypeNID: prev.TypeNID, StateKeyNID: prev.StateKeyNID + int64(sk)}
		} else {
			if td > uint64(math.MaxInt64-prev.TypeNID) {
				return 0, nil, corrupt("block: entry %d: type delta %d overflows", i, td)
			}
			if sk == 0 || sk > math.MaxInt64 {
				return 0, nil, corrupt("block: entry %d: bad state key %d", i, sk)
			}
			k = Key{TypeNID: prev.TypeNID + int64(td), StateKeyNID: int64(sk)}
		}
		if ev == 0 || ev > math.MaxInt64 {
			return 0, nil, corrupt("block: entry %d: bad event %d", i, ev)
		}
		if bucketOf(k) != bucket {
			return 0, nil, corrupt("block: entry %d is not in bucket %d", i, bucket)
		}
		entries = append(entries, Entry{Key: k, EventNID: int64(ev)})
		prev = k
	}
	if r.off != len(data) {
		return 0, nil, corrupt("block: %d trailing bytes", len(data)-r.off)
	}
	return bucket, entries, nil
}

// encodeSnapshot encodes the block IDs of a snapshot (at least one non-zero):
//
//	byte     format (1)
//	8 bytes  little-endian bitmap of the non-empty buckets
//	uvarint  block NID of each non-empty bucket, in bucket order (>= 1)
func encodeSnapshot(blocks *[numBuckets]int64) []byte {
	var bitmap uint64
	for i, b := range blocks {
		if b != 0 {
			bitmap |= 1 << i
		}
	}
	buf := make([]byte, 9, 9+bits.OnesCount64(bitmap)*binary.MaxVarintLen32)
	buf[0] = snapshotFormat
	binary.LittleEndian.PutUint64(buf[1:], bitmap)
	for _, b := range blocks {
		if b != 0 {
			buf = binary.AppendUvarint(buf, uint64(b))
		}
	}
	return buf
}

// decodeSnapshot decodes and checks the block IDs of a snapshot.
func decodeSnapshot(data []byte) (blocks [numBuckets]int64, err error) {
	if len(data) < 9 {
		return blocks, corrupt("snapshot: %d bytes", len(data))
	}
	if data[0] != snapshotFormat {
		return blocks, corrupt("snapshot: unknown format %d", data[0])
	}
	bitmap := binary.LittleEndian.Uint64(data[1:9])
	if bitmap == 0 {
		return blocks, corrupt("snapshot: no blocks")
	}
	r := byteReader{data: data, off: 9}
	for i := range blocks {
		if bitmap&(1<<i) == 0 {
			continue
		}
		v, err := r.uvarint()
		if err != nil {
			return blocks, err
		}
		if v == 0 || v > math.MaxInt64 {
			return blocks, corrupt("snapshot: bucket %d: block %d", i, v)
		}
		blocks[i] = int64(v)
	}
	if r.off != len(data) {
		return blocks, corrupt("snapshot: %d trailing bytes", len(data)-r.off)
	}
	return blocks, nil
}

type byteReader struct {
	data []byte
	off  int
}

// uvarint reads a minimal unsigned varint.
func (r *byteReader) uvarint() (uint64, error) {
	var v uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if r.off >= len(r.data) {
			return 0, corrupt("truncated varint at byte %d", r.off)
		}
		b := r.data[r.off]
		r.off++
		if i == binary.MaxVarintLen64-1 && b > 1 {
			return 0, corrupt("varint overflows at byte %d", r.off-1)
		}
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			if b == 0 && i > 0 {
				return 0, corrupt("non-minimal varint at byte %d", r.off-1)
			}
			return v, nil
		}
	}
	return 0, corrupt("varint too long at byte %d", r.off)
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}
