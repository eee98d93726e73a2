package mxid

import (
	"strings"
	"testing"
)

// FuzzParseUserID checks that parsing never panics, and that whatever it
// accepts prints back to the same string and obeys the grammar.
func FuzzParseUserID(f *testing.F) {
	for _, s := range []string{"@alice:example.org", "@a:[::1]:80", "@:x", "@a:b:c:d", "@\x00:x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUserID(s)
		if err != nil {
			return
		}
		if u.String() != s {
			t.Fatalf("round trip %q -> %q", s, u.String())
		}
		if len(s) > MaxUserIDLength || u.Localpart == "" || strings.Contains(u.Localpart, ":") {
			t.Fatalf("accepted bad ID %q", s)
		}
	})
}
