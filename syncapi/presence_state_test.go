package syncapi

import "testing"

func TestPresenceEffective(t *testing.T) {
	const now = int64(10_000_000_000)
	minute := int64(60_000)
	cases := []struct {
		name string
		p    presenceState
		want string
	}{
		{"never set", presenceState{}, presenceOffline},
		{"online and active", presenceState{Presence: presenceOnline, LastActiveTS: now - minute, LastSeenTS: now - minute}, presenceOnline},
		{"online but idle", presenceState{Presence: presenceOnline, LastActiveTS: now - 6*minute, LastSeenTS: now - minute}, presenceUnavailable},
		{"online, gone", presenceState{Presence: presenceOnline, LastActiveTS: now - 31*minute, LastSeenTS: now - 31*minute}, presenceOffline},
		{"unavailable, still syncing", presenceState{Presence: presenceUnavailable, LastActiveTS: now - 60*minute, LastSeenTS: now - minute}, presenceUnavailable},
		{"unavailable, gone", presenceState{Presence: presenceUnavailable, LastSeenTS: now - 31*minute}, presenceOffline},
		{"offline, syncing", presenceState{Presence: presenceOffline, LastActiveTS: now, LastSeenTS: now}, presenceOffline},
	}
	for _, c := range cases {
		if got := c.p.effective(now); got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, got, c.want)
		}
	}
}

func TestPresenceUpdateApply(t *testing.T) {
	const now = int64(10_000_000_000)
	minute := int64(60_000)
	online := presenceUpdate{presence: presenceOnline, active: true}
	idle := presenceUpdate{presence: presenceUnavailable}
	msg := "lunch"
	empty := ""
	active := presenceState{Presence: presenceOnline, StatusMsg: "lunch", LastActiveTS: now - 10_000, LastSeenTS: now - 10_000, Pos: 7}
	cases := []struct {
		name           string
		u              presenceUpdate
		old            presenceState
		found          bool
		write, changed bool
	}{
		{"first sync", online, presenceState{}, false, true, true},
		{"sync again soon", online, active, true, false, false},
		{"sync after a while", online, presenceState{Presence: presenceOnline, LastActiveTS: now - 2*minute, LastSeenTS: now - 2*minute}, true, true, false},
		{"back from idle", online, presenceState{Presence: presenceOnline, LastActiveTS: now - 10*minute, LastSeenTS: now - 10*minute}, true, true, true},
		{"set unavailable", idle, active, true, true, true},
		{"unavailable again", idle, presenceState{Presence: presenceUnavailable, LastSeenTS: now - 10_000}, true, false, false},
		{"idle user says unavailable", idle, presenceState{Presence: presenceOnline, LastActiveTS: now - 10*minute, LastSeenTS: now - 10_000}, true, true, false},
		{"same PUT", presenceUpdate{presence: presenceOnline, statusMsg: &msg, active: true, explicit: true}, active, true, true, false},
		{"PUT clears message", presenceUpdate{presence: presenceOnline, statusMsg: &empty, active: true, explicit: true}, active, true, true, true},
	}
	for _, c := range cases {
		next, write, changed := c.u.apply(c.old, c.found, now)
		if write != c.write || changed != c.changed {
			t.Errorf("%s: write %v changed %v, want %v %v", c.name, write, changed, c.write, c.changed)
		}
		if next.LastSeenTS != now || (c.u.active && next.LastActiveTS != now) || next.Presence != c.u.presence {
			t.Errorf("%s: state after update %+v", c.name, next)
		}
		if c.u.statusMsg == nil && next.StatusMsg != c.old.StatusMsg {
			t.Errorf("%s: status message lost", c.name)
		}
	}
}
