package state

import (
	"bytes"
	"slices"
	"testing"
)

// FuzzDecodeBlock feeds arbitrary bytes to the block decoder: it must never
// panic, and whatever it accepts must be a valid block that encodes back to
// exactly the same bytes (the encoding is canonical, which block dedup by
// hash relies on).
func FuzzDecodeBlock(f *testing.F) {
	k1, k2 := Key{TypeMember, 1}, Key{TypeMember, 2}
	f.Add(encodeBlock(bucketOf(k1), []Entry{{k1, 1}}))
	f.Add(encodeBlock(bucketOf(k2), []Entry{{k2, 1 << 40}}))
	var es []Entry
	for sk := int64(1); len(es) < 40; sk++ {
		if k := (Key{TypeMember, sk}); bucketOf(k) == 3 {
			es = append(es, Entry{k, sk * 3})
		}
	}
	f.Add(encodeBlock(3, es))
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		bucket, entries, err := decodeBlock(data)
		if err != nil {
			return
		}
		if len(entries) == 0 || bucket < 0 || bucket >= numBuckets {
			t.Fatalf("accepted bucket %d with %d entries", bucket, len(entries))
		}
		for i, e := range entries {
			if e.TypeNID <= 0 || e.StateKeyNID <= 0 || e.EventNID <= 0 || bucketOf(e.Key) != bucket {
				t.Fatalf("accepted invalid entry %+v", e)
			}
			if i > 0 && entries[i-1].Key.Compare(e.Key) >= 0 {
				t.Fatalf("accepted unsorted entries at %d", i)
			}
		}
		if again := encodeBlock(bucket, entries); !bytes.Equal(again, data) {
			t.Fatalf("not canonical: %x encodes back as %x", data, again)
		}
	})
}

// FuzzDecodeSnapshot is the same for the block list of a snapshot.
func FuzzDecodeSnapshot(f *testing.F) {
	var blocks [numBuckets]int64
	blocks[1], blocks[40] = 5, 1<<33
	f.Add(encodeSnapshot(&blocks))
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0x80, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		blocks, err := decodeSnapshot(data)
		if err != nil {
			return
		}
		if slices.ContainsFunc(blocks[:], func(b int64) bool { return b < 0 }) {
			t.Fatal("accepted a negative block ID")
		}
		if again := encodeSnapshot(&blocks); !bytes.Equal(again, data) {
			t.Fatalf("not canonical: %x encodes back as %x", data, again)
		}
	})
}
