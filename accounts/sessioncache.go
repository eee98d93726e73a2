package accounts

import (
	"sync"
	"time"
)

// sessionCache keeps recent answers of Authenticate, so that a request
// does not read the device and account rows each time: every client
// request is authenticated, and it was a tenth of a small request's time.
//
// Any change that can end or alter a session (a login replacing a
// device's token, a refresh, a device deleted, an account deactivated)
// bumps the generation after it commits, which drops every entry. A
// lookup reads the generation before reading the database and caches
// its answer only if no change committed meanwhile, so the cache never
// keeps what a change has already removed.
type sessionCache struct {
	mu      sync.Mutex
	gen     uint64
	entries map[string]cachedSession // by access token hash
}

type cachedSession struct {
	session   Session
	expiresTS int64 // the token's expiry (ms), 0 for none
	until     int64 // when the entry is read again from the database (ms)
	gen       uint64
}

const (
	// sessionCacheTTL bounds how long an entry is trusted without a change
	// being seen; sessionCacheMax bounds its size (it starts afresh when
	// full).
	sessionCacheTTL = time.Minute
	sessionCacheMax = 50_000
)

func newSessionCache() *sessionCache {
	return &sessionCache{entries: map[string]cachedSession{}}
}

// generation is read before a database lookup whose answer may be put.
func (c *sessionCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// get returns the cached session of a token hash, if still good at now.
func (c *sessionCache) get(hash string, now int64) (Session, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[hash]
	if !ok || e.gen != c.gen || now >= e.until || (e.expiresTS != 0 && now >= e.expiresTS) {
		return Session{}, false
	}
	return e.session, true
}

// put caches a session read from the database at generation gen.
func (c *sessionCache) put(hash string, s Session, expiresTS int64, gen uint64, now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return // a change committed while we read
	}
	if len(c.entries) >= sessionCacheMax {
		clear(c.entries)
	}
	c.entries[hash] = cachedSession{session: s, expiresTS: expiresTS, until: now + sessionCacheTTL.Milliseconds(), gen: gen}
}

// invalidate drops every entry; call it after a change that can end or
// alter sessions has committed (or failed: a spare bump costs a lookup).
func (c *sessionCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.entries)
}
