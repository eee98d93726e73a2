package federationapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// RemoteHierarchy asks a server for one level of a space
// (GET /_matrix/federation/v1/hierarchy/{roomId}) for the client API's
// space hierarchy and room summaries, and returns its answer as it came.
// Answers, failures included, are kept for a short while: a client paging
// through a space asks for the same rooms again, and the spec asks that
// these answers be cached.

const (
	hierarchyCacheTTL     = time.Minute
	hierarchyCacheEntries = 1000
)

type hierarchyCacheEntry struct {
	at   time.Time
	data json.RawMessage
	err  error
}

// hierarchyCache is usable as its zero value.
type hierarchyCache struct {
	mu      sync.Mutex
	entries map[string]hierarchyCacheEntry
}

func (c *hierarchyCache) get(key string) (hierarchyCacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || time.Since(e.at) > hierarchyCacheTTL {
		return hierarchyCacheEntry{}, false
	}
	return e, true
}

func (c *hierarchyCache) put(key string, e hierarchyCacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]hierarchyCacheEntry{}
	}
	if len(c.entries) >= hierarchyCacheEntries {
		for k, old := range c.entries {
			if time.Since(old.at) > hierarchyCacheTTL {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= hierarchyCacheEntries {
			c.entries = map[string]hierarchyCacheEntry{}
		}
	}
	c.entries[key] = e
}

// RemoteHierarchy asks server about roomID.
func (q *Queries) RemoteHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (json.RawMessage, error) {
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok {
		return nil, httputil.InvalidParam("Invalid server name %q", server)
	}
	if spec.ServerName(server) == q.fed.ServerName() {
		return nil, httputil.NotFound("Room %s is not known here", roomID)
	}
	key := server + "\x00" + roomID
	if suggestedOnly {
		key += "\x00s"
	}
	if e, ok := q.hierarchy.get(key); ok {
		return e.data, e.err
	}
	path := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(roomID)
	if suggestedOnly {
		path += "?suggested_only=true"
	}
	data, err := q.call(ctx, http.MethodGet, spec.ServerName(server), path, nil)
	if ctx.Err() == nil { // a cancelled request says nothing about the server
		q.hierarchy.put(key, hierarchyCacheEntry{at: time.Now(), data: data, err: err})
	}
	return data, err
}
