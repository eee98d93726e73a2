package syncapi

import "testing"

func TestReadMarks(t *testing.T) {
	m := readMarks{unthreaded: 5, main: 3, threads: map[string]int64{"$t1": 9, "$t2": 2}}
	for _, tc := range []struct {
		thread string
		want   int64
	}{
		{"main", 5}, {"$t1", 9}, {"$t2", 5}, {"$t3", 5},
	} {
		if got := m.mark(tc.thread); got != tc.want {
			t.Errorf("%s read up to %d, want %d", tc.thread, got, tc.want)
		}
	}
	if (readMarks{unthreaded: 1, main: 4}).mainMark() != 4 {
		t.Error("a main receipt ahead of the unthreaded one is ignored")
	}
}
