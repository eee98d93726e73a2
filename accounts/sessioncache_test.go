package accounts

import "testing"

func TestSessionCache(t *testing.T) {
	c := newSessionCache()
	s := Session{Localpart: "alice", DeviceID: "D"}
	now := int64(1_000_000)

	c.put("h", s, now+100, c.generation(), now)
	if got, ok := c.get("h", now+1); !ok || got != s {
		t.Fatalf("cached session: %+v %v", got, ok)
	}
	if _, ok := c.get("h", now+100); ok {
		t.Fatal("served after the token expired")
	}
	if _, ok := c.get("h", now+sessionCacheTTL.Milliseconds()); ok {
		t.Fatal("served after the entry's time to live")
	}

	// A change drops what is cached ...
	c.put("h", s, 0, c.generation(), now)
	c.invalidate()
	if _, ok := c.get("h", now+1); ok {
		t.Fatal("served after an invalidation")
	}
	// ... and what a lookup read before it committed is not kept.
	gen := c.generation()
	c.invalidate()
	c.put("h", s, 0, gen, now)
	if _, ok := c.get("h", now+1); ok {
		t.Fatal("kept an answer read before a change")
	}
}
