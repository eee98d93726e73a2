package syncapi

import "testing"

func TestHighlightPatterns(t *testing.T) {
	for _, tc := range []struct {
		user, name     string
		byUser, byName string
	}{
		{"@alice:x", "", "%@alice:x%", "%@alice:x%"},
		{"@alice:x", "   ", "%@alice:x%", "%@alice:x%"},
		{"@al_ice:x", "Alice", "%@al!_ice:x%", `%"body":"%alice%"depth":%`},
		{"@a:x", `50% "Bob"!`, "%@a:x%", `%"body":"%50!% \"bob\"!!%"depth":%`},
		{"@a:x", "<Ölaf>", "%@a:x%", `%"body":"%<ölaf>%"depth":%`},
	} {
		byUser, byName := highlightPatterns(tc.user, tc.name)
		if byUser != tc.byUser || byName != tc.byName {
			t.Errorf("highlightPatterns(%q, %q) = %q, %q; want %q, %q", tc.user, tc.name, byUser, byName, tc.byUser, tc.byName)
		}
	}
}

func TestReadMarks(t *testing.T) {
	m := readMarks{unthreaded: 5, main: 3, threads: map[string]int64{"$t1": 9, "$t2": 2}}
	for _, tc := range []struct {
		thread string
		want   int64
	}{
		{"main", 5}, {"$t1", 9}, {"$t2", 5}, {"$t3", 5},
	} {
		got := m.mainMark()
		if tc.thread != "main" {
			got = m.threadMark(tc.thread)
		}
		if got != tc.want {
			t.Errorf("%s read up to %d, want %d", tc.thread, got, tc.want)
		}
	}
	if (readMarks{unthreaded: 1, main: 4}).mainMark() != 4 {
		t.Error("a main receipt ahead of the unthreaded one is ignored")
	}
}
