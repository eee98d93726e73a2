package roomserver

import (
	"hash/maphash"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
)

// pduCache keeps parsed stored events, because parsing their JSON was a
// quarter of the CPU of a send: the auth events (create, power levels,
// join rules, the sender's membership) are read again for every event in
// a room. An entry is keyed by everything the parse depends on, including
// a hash of the stored bytes, so a redaction (new JSON, new flag) or a
// transaction that rolled back can never serve a stale PDU; a hit only
// saves work. PDUs are not modified after parsing.
type pduCache struct {
	mu      sync.Mutex
	entries map[pduKey]gomatrixserverlib.PDU
}

type pduKey struct {
	eventID, version string
	redacted         bool
	sum              uint64
}

// maxCachedPDUs bounds the cache (a few MB); when it is full it starts over,
// which keeps the hot events (they are read again at once) without the
// bookkeeping of an LRU.
const maxCachedPDUs = 8192

var (
	parsedPDUs = pduCache{entries: map[pduKey]gomatrixserverlib.PDU{}}
	pduSeed    = maphash.MakeSeed()
)

func (c *pduCache) parse(version, eventID, eventJSON string, redacted bool) (gomatrixserverlib.PDU, error) {
	key := pduKey{eventID: eventID, version: version, redacted: redacted, sum: maphash.String(pduSeed, eventJSON)}
	c.mu.Lock()
	pdu, ok := c.entries[key]
	c.mu.Unlock()
	if ok {
		return pdu, nil
	}
	pdu, err := parseStored(version, eventID, eventJSON, redacted)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.entries) >= maxCachedPDUs {
		clear(c.entries)
	}
	c.entries[key] = pdu
	c.mu.Unlock()
	return pdu, nil
}
