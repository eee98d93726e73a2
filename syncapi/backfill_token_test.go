package syncapi

import "testing"

func TestBackfillTokens(t *testing.T) {
	for _, p := range []backfillPos{{0, 0}, {5, 17}, backfillTop, backfillBottom} {
		got, ok := parseBackfillToken(p.String())
		if !ok || got != p {
			t.Errorf("round trip of %+v: %+v %v", p, got, ok)
		}
	}
	for _, bad := range []string{"", "b", "b1", "b1_", "b_1", "s1_2", "bx_1", "b1_x", "b-2_1", "b1_-1", "b1_2_3",
		"b99999999999999999999_1", "b" + string(make([]byte, 60))} {
		if _, ok := parseBackfillToken(bad); ok {
			t.Errorf("%q parsed as a backfill token", bad)
		}
	}
	// Stream tokens are not backfill tokens and the reverse.
	if _, err := ParseToken(backfillPos{3, 4}.String()); err == nil {
		t.Error("a backfill token parses as a stream token")
	}
	if _, ok := parseBackfillToken(Token{PDU: 3}.String()); ok {
		t.Error("a stream token parses as a backfill token")
	}
}
