package userdirectory

import (
	"slices"
	"strings"
	"testing"
)

func TestUserWords(t *testing.T) {
	cases := []struct {
		userID, name string
		want         []string
	}{
		{"@alice:example.org", "Alice Liddell", []string{"alice", "liddell", "example", "org"}},
		{"@bob_smith:localhost", "", []string{"bob", "smith", "localhost"}},
		{"@x:h", "Zoë O'Brien-Ünal", []string{"zoë", "o", "brien", "ünal", "x", "h"}},
		{"@y:h", "100% _sure_", []string{"100", "sure", "y", "h"}},
		{"@z:h", "名前 テスト", []string{"名前", "テスト", "z", "h"}},
	}
	for _, c := range cases {
		if got := userWords(c.userID, c.name); !slices.Equal(got, c.want) {
			t.Errorf("userWords(%q, %q) = %q, want %q", c.userID, c.name, got, c.want)
		}
	}
	long := strings.Repeat("é", 100)
	if got := userWords("@u:h", long); len(got[0]) > maxWordLength {
		t.Errorf("stored word of %d bytes", len(got[0]))
	}
	if got := userWords("@u:h", strings.Repeat("w1 w2 w3 ", 40)+strings.Repeat("x", 10)); len(got) > maxUserWords {
		t.Errorf("%d words kept", len(got))
	}
}

func TestTermWords(t *testing.T) {
	// LIKE wildcards and quotes separate words, so they never reach a pattern.
	for term, want := range map[string][]string{
		"%":              nil,
		"a%b_c":          {"a", "b", "c"},
		"@bob:localhost": {"bob", "localhost"},
		"'; DROP TABLE":  {"drop", "table"},
		"ROBERT":         {"robert"},
	} {
		if got := termWords(term); !slices.Equal(got, want) {
			t.Errorf("termWords(%q) = %q, want %q", term, got, want)
		}
	}
	if got := termWords(strings.Repeat("a ", 20)); len(got) != maxTermWords {
		t.Errorf("%d term words kept", len(got))
	}
	// A long word is cut as stored words are, so it can still match.
	long := strings.Repeat("é", 100)
	if got, stored := termWords(long), userWords("@u:h", long); got[0] != stored[0] {
		t.Errorf("long term word %q does not match the stored %q", got[0], stored[0])
	}
}
