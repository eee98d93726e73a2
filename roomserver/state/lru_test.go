package state

import "testing"

func TestLRU(t *testing.T) {
	c := newLRU[int, string](10)
	c.add(1, "a", 4)
	c.add(2, "b", 4)
	if _, ok := c.get(1); !ok { // 1 is now the most recent
		t.Fatal("1 missing")
	}
	c.add(3, "c", 4) // total 12 > 10: evicts 2, the least recent
	if _, ok := c.get(2); ok {
		t.Fatal("2 should have been evicted")
	}
	for _, k := range []int{1, 3} {
		if _, ok := c.get(k); !ok {
			t.Fatalf("%d missing", k)
		}
	}
	c.add(1, "A", 1) // replace, lighter
	if v, _ := c.get(1); v != "A" || c.total != 5 {
		t.Fatalf("replace: v=%q total=%d", v, c.total)
	}
	c.add(4, "too heavy", 11)
	if _, ok := c.get(4); ok || c.len() != 2 {
		t.Fatalf("an item heavier than the limit was stored (len %d)", c.len())
	}
	c.add(3, "c", 11) // replacing with a too heavy value drops the old one
	if _, ok := c.get(3); ok || c.total != 1 {
		t.Fatalf("total = %d after dropping 3", c.total)
	}
}
