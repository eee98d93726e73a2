package syncapi

import "testing"

func TestTokenRoundTrip(t *testing.T) {
	cases := []Token{{}, {PDU: 1}, {PDU: 12, Typing: 1764180000000, Receipt: 3, AccountData: 4, ToDevice: 5, Presence: 6, DeviceList: 7}}
	for _, tok := range cases {
		got, err := ParseToken(tok.String())
		if err != nil || got != tok {
			t.Errorf("round trip %v -> %q -> %v, %v", tok, tok.String(), got, err)
		}
	}
	if got, err := ParseToken("s5_6"); err != nil || got != (Token{PDU: 5, Typing: 6}) {
		t.Errorf("short token: %v %v", got, err)
	}
	for _, bad := range []string{"", "s", "x1_2", "s1__2", "s-1", "s01", "s1_2_3_4_5_6_7_8", "s1.5", "s99999999999999999999"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
	if !(Token{PDU: 2}).IsAfter(Token{PDU: 1, Typing: 9}) || (Token{PDU: 1}).IsAfter(Token{PDU: 1}) {
		t.Error("IsAfter")
	}
}

func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"s1_2_3_4_5_6_7", "s0", "s", "t1", "s1__"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("%q parsed to %v but its encoding %q does not round trip", s, tok, tok.String())
		}
	})
}
