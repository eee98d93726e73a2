package syncapi

import (
	"slices"
	"testing"
	"time"
)

func TestTypingChanges(t *testing.T) {
	state := &typingState{pos: 30, rooms: map[string]*roomTyping{
		"!typing":  {pos: 10, users: map[string]time.Time{"@b:x": {}, "@a:x": {}}},
		"!stopped": {pos: 20, users: map[string]time.Time{}},
		"!foreign": {pos: 25, users: map[string]time.Time{"@c:x": {}}},
	}}
	joined := map[string]bool{"!typing": true, "!stopped": true, "!quiet": true}
	for _, tc := range []struct {
		name    string
		since   int64
		initial bool
		want    map[string][]string
	}{
		{"initial sync: rooms where someone types", 0, true, map[string][]string{"!typing": {"@a:x", "@b:x"}}},
		{"old token: every change, stops too", 5, false, map[string][]string{"!typing": {"@a:x", "@b:x"}, "!stopped": {}}},
		{"between the changes", 10, false, map[string][]string{"!stopped": {}}},
		{"up to date", 30, false, map[string][]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, pos := state.changes(tc.since, tc.initial, joined)
			if pos != 30 {
				t.Errorf("position %d, want 30", pos)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for room, users := range tc.want {
				if !slices.Equal(got[room], users) {
					t.Errorf("%s: got %v, want %v", room, got[room], users)
				}
			}
		})
	}
}

func TestTypingPositionsAndExpiry(t *testing.T) {
	woken := make(chan string, 10)
	state := newTypingState(func(roomID string) { woken <- roomID })
	if now := time.Now().UnixMilli(); state.pos > now || state.pos < now-1000 {
		t.Fatalf("position %d not seeded from the clock (%d)", state.pos, now)
	}
	room := func() (users int, pos int64) {
		state.mu.Lock()
		defer state.mu.Unlock()
		return len(state.rooms["!r"].users), state.rooms["!r"].pos
	}
	positions := []int64{state.pos}

	state.set("!r", "@a:x", true, 100*time.Millisecond)
	if got := <-woken; got != "!r" {
		t.Fatalf("woke %q", got)
	}
	_, pos := room()
	positions = append(positions, pos)
	// Typing again only extends the timeout: no new position, no wake.
	state.set("!r", "@a:x", true, 100*time.Millisecond)
	if _, again := room(); again != pos {
		t.Fatal("repeating typing moved the position")
	}
	// The next wake is the expiry.
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("the expiry woke nobody")
	}
	users, pos := room()
	if users != 0 {
		t.Fatal("woken before typing expired")
	}
	positions = append(positions, pos)
	state.set("!r", "@a:x", false, 0) // already stopped: no change
	select {
	case got := <-woken:
		t.Fatalf("stopping twice woke %q", got)
	case <-time.After(20 * time.Millisecond):
	}
	if positions[0] >= positions[1] || positions[1] >= positions[2] {
		t.Fatalf("positions not increasing: %v", positions)
	}
}
