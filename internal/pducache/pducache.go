// Package pducache keeps parsed stored events. Parsing an event's JSON is
// a large part of the CPU of a send (the roomserver reads the auth events
// again for every event in a room) and of reading history (the sync API
// parses every event it serves). An entry is keyed by everything the
// parse depends on, including a hash of the stored bytes, so a redaction
// (new JSON, new flag) or a transaction that rolled back can never serve
// a stale PDU; a hit only saves work. PDUs are not modified after parsing.
package pducache

import (
	"fmt"
	"hash/maphash"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
)

// Cache is a bounded cache of parsed events.
type Cache struct {
	mu      sync.Mutex
	max     int
	entries map[key]gomatrixserverlib.PDU
	parse   func(version, eventID, eventJSON string, redacted bool) (gomatrixserverlib.PDU, error)
}

type key struct {
	eventID, version string
	redacted         bool
	sum              uint64
}

var seed = maphash.MakeSeed()

// New returns a cache of at most max events. When it is full it starts
// over, which keeps the hot events (they are read again at once) without
// the bookkeeping of an LRU.
func New(max int) *Cache {
	return &Cache{max: max, entries: map[key]gomatrixserverlib.PDU{}, parse: ParseStored}
}

// ParseStored rebuilds a PDU from its stored JSON, trusted because it was
// checked on the way in; redacted says the stored JSON is the redacted
// form.
func ParseStored(version, eventID, eventJSON string, redacted bool) (gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, err
	}
	pdu, err := verImpl.NewEventFromTrustedJSONWithEventID(eventID, []byte(eventJSON), redacted)
	if err != nil {
		return nil, fmt.Errorf("stored event %s: %w", eventID, err)
	}
	return pdu, nil
}

// Parse returns the event stored as eventJSON (ParseStored's), parsed
// again only when the same stored row was not parsed before.
func (c *Cache) Parse(version, eventID, eventJSON string, redacted bool) (gomatrixserverlib.PDU, error) {
	k := key{eventID: eventID, version: version, redacted: redacted, sum: maphash.String(seed, eventJSON)}
	c.mu.Lock()
	pdu, ok := c.entries[k]
	c.mu.Unlock()
	if ok {
		return pdu, nil
	}
	pdu, err := c.parse(version, eventID, eventJSON, redacted)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.entries) >= c.max {
		clear(c.entries)
	}
	c.entries[k] = pdu
	c.mu.Unlock()
	return pdu, nil
}

// Len is the number of cached events.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
