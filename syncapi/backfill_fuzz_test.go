package syncapi

import "testing"

// FuzzBackfillToken checks that no from or to value crashes the backfill
// token parser and that what it accepts encodes back to itself.
func FuzzBackfillToken(f *testing.F) {
	for _, seed := range []string{"b1_2", "b-1_0", "b9223372036854775807_9223372036854775807", "s1_2_3", "b01_2", "b1_2_3"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, ok := parseBackfillToken(s)
		if !ok {
			return
		}
		again, ok := parseBackfillToken(p.String())
		if !ok || again != p {
			t.Fatalf("%q parsed as %+v, which does not round-trip", s, p)
		}
	})
}
