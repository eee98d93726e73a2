package mxid

import "testing"

func TestParseUserID(t *testing.T) {
	good := map[string]UserID{
		"@alice:example.org":   {"alice", "example.org"},
		"@a:localhost:8008":    {"a", "localhost:8008"},
		"@Old_Style!:1.2.3.4":  {"Old_Style!", "1.2.3.4"},
		"@x:[::1]:8448":        {"x", "[::1]:8448"},
		"@=2f.-_/+:matrix.org": {"=2f.-_/+", "matrix.org"},
	}
	for s, want := range good {
		got, err := ParseUserID(s)
		if err != nil || got != want {
			t.Errorf("ParseUserID(%q) = %v, %v; want %v", s, got, err, want)
		}
		if got.String() != s {
			t.Errorf("String() = %q, want %q", got.String(), s)
		}
	}
	long := "@" + string(make([]byte, 250)) + ":x.org"
	for _, s := range []string{"", "alice:example.org", "@alice", "@:example.org", "@al ice:example.org", "@alice:", "@alice:bad host", "@al\u00e9:x.org", long} {
		if _, err := ParseUserID(s); err == nil {
			t.Errorf("ParseUserID(%q) accepted", s)
		}
	}
}

func TestValidNewLocalpart(t *testing.T) {
	for _, s := range []string{"alice", "a.b_c=d-e/f+g", "123"} {
		if !ValidNewLocalpart(s) {
			t.Errorf("%q rejected", s)
		}
	}
	for _, s := range []string{"", "Alice", "a b", "a:b", "a!", "é", "us,er"} {
		if ValidNewLocalpart(s) {
			t.Errorf("%q accepted", s)
		}
	}
}
