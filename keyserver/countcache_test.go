package keyserver

import "testing"

func TestCountCacheKeepsOnlyCountsNoChangeRacedWith(t *testing.T) {
	c := newCountCache()
	if _, _, _, ok := c.get("@a:x", "D"); ok {
		t.Fatal("a hit in an empty cache")
	}
	_, _, gen, _ := c.get("@a:x", "D")
	c.put("@a:x", "D", gen, map[string]int{"signed_curve25519": 5}, []string{"signed_curve25519"})
	counts, fallback, _, ok := c.get("@a:x", "D")
	if !ok || counts["signed_curve25519"] != 5 || len(fallback) != 1 {
		t.Fatalf("kept counts: %v %v %v", counts, fallback, ok)
	}
	counts["signed_curve25519"] = 0 // the caller's copy
	if again, _, _, _ := c.get("@a:x", "D"); again["signed_curve25519"] != 5 {
		t.Fatalf("a caller changed the kept counts: %v", again)
	}

	// A change drops them; counts read before it finished are not kept.
	_, _, before, _ := c.get("@a:x", "E")
	c.changed("@a:x", "D", "E")
	if _, _, _, ok := c.get("@a:x", "D"); ok {
		t.Fatal("counts kept after a change")
	}
	c.put("@a:x", "E", before, map[string]int{"signed_curve25519": 1}, nil)
	if _, _, _, ok := c.get("@a:x", "E"); ok {
		t.Fatal("counts read before a change were kept after it")
	}
	// Other users' devices are not touched.
	_, _, g, _ := c.get("@b:x", "D")
	c.put("@b:x", "D", g, map[string]int{}, nil)
	c.changed("@a:x", "D")
	if _, _, _, ok := c.get("@b:x", "D"); !ok {
		t.Fatal("a change of @a:x dropped @b:x's counts")
	}
}
