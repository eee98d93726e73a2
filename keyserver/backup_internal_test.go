package keyserver

import "testing"

// TestBetterBackupKey is the spec's order for which backed-up session
// wins: is_verified, then the lower first_message_index, then the lower
// forwarded_count; an equal key does not replace the stored one.
func TestBetterBackupKey(t *testing.T) {
	key := func(verified bool, index, forwarded int64) BackupKey {
		return BackupKey{IsVerified: verified, FirstMessageIndex: index, ForwardedCount: forwarded}
	}
	for _, c := range []struct {
		name     string
		new, old BackupKey
		want     bool
	}{
		{"verified beats unverified", key(true, 10, 5), key(false, 0, 0), true},
		{"unverified loses to verified", key(false, 0, 0), key(true, 10, 5), false},
		{"lower index wins", key(false, 1, 9), key(false, 2, 0), true},
		{"higher index loses", key(true, 3, 0), key(true, 2, 9), false},
		{"fewer forwards win", key(false, 2, 0), key(false, 2, 1), true},
		{"more forwards lose", key(false, 2, 2), key(false, 2, 1), false},
		{"equal keeps the stored one", key(true, 2, 1), key(true, 2, 1), false},
	} {
		if got := better(c.new, c.old); got != c.want {
			t.Errorf("%s: better = %v, want %v", c.name, got, c.want)
		}
	}
}
