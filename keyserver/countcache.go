package keyserver

import (
	"maps"
	"slices"
	"sync"
)

// countCache keeps each device's one-time key counts and unused fallback
// key types, which every /sync of the device reports and which change
// only when keys are uploaded, claimed or deleted (by this process).
// Each change bumps the device's generation after its commit; a count
// read from the database is kept only if no change began meanwhile, so a
// count from before a change cannot outlive it.
type countCache struct {
	mu      sync.Mutex
	gen     map[deviceKey]uint64
	entries map[deviceKey]countEntry
}

type deviceKey struct{ userID, deviceID string }

type countEntry struct {
	gen      uint64
	counts   map[string]int
	fallback []string
}

func newCountCache() *countCache {
	return &countCache{gen: map[deviceKey]uint64{}, entries: map[deviceKey]countEntry{}}
}

// get returns the device's counts and whether they were kept; on a miss,
// gen is what to hand to put with the counts read.
func (c *countCache) get(userID, deviceID string) (counts map[string]int, fallback []string, gen uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := deviceKey{userID, deviceID}
	e, ok := c.entries[k]
	if !ok || e.gen != c.gen[k] {
		return nil, nil, c.gen[k], false
	}
	// Copies: the caller may change what it gets.
	return maps.Clone(e.counts), slices.Clone(e.fallback), e.gen, true
}

// put keeps counts read at generation gen, unless the device changed since.
func (c *countCache) put(userID, deviceID string, gen uint64, counts map[string]int, fallback []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := deviceKey{userID, deviceID}
	if c.gen[k] == gen {
		c.entries[k] = countEntry{gen: gen, counts: maps.Clone(counts), fallback: slices.Clone(fallback)}
	}
}

// changed drops what is kept of the devices; call it after a change
// to their keys has committed (or failed).
func (c *countCache) changed(userID string, deviceIDs ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range deviceIDs {
		k := deviceKey{userID, d}
		c.gen[k]++
		delete(c.entries, k)
	}
}
