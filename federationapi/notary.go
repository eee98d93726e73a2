package federationapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// The notary endpoints serve other servers' key responses as we fetched
// them from those servers, with our signature added. A cached response is
// served while it is in the first half of its lifetime (as the spec asks
// of notaries), valid until the time the asker needs and holds the key IDs
// it asks for; otherwise the server is asked again, and if it does not
// answer the last response is served anyway, so that old signatures can
// still be checked.

const (
	// maxNotaryServers bounds the servers one POST may ask about.
	maxNotaryServers = 200
	// notaryParallel bounds the fetches one request runs at once.
	notaryParallel = 8
)

// notaryQuery is what the asker needs of one server's keys.
type notaryQuery struct {
	minValidUntil spec.Timestamp
	keyIDs        []gomatrixserverlib.KeyID
}

// queryKeysGET serves GET /_matrix/key/v2/query/{serverName}.
func (f *FederationAPI) queryKeysGET(w http.ResponseWriter, r *http.Request) error {
	server := spec.ServerName(httputil.Vars(r)["serverName"])
	if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
		return httputil.InvalidParam("Invalid server name")
	}
	q := notaryQuery{minValidUntil: spec.AsTimestamp(time.Now())}
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		ts, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ts < 0 {
			return httputil.InvalidParam("minimum_valid_until_ts must be a timestamp in milliseconds")
		}
		q.minValidUntil = spec.Timestamp(ts)
	}
	return f.writeNotaryResponse(w, r, map[spec.ServerName]notaryQuery{server: q})
}

// queryKeysPOST serves POST /_matrix/key/v2/query.
func (f *FederationAPI) queryKeysPOST(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		ServerKeys *map[string]map[string]struct {
			MinimumValidUntilTS *int64 `json:"minimum_valid_until_ts"`
		} `json:"server_keys"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	if body.ServerKeys == nil {
		return httputil.MissingParam("server_keys is required")
	}
	if len(*body.ServerKeys) > maxNotaryServers {
		return httputil.InvalidParam("Too many servers in one query (at most %d)", maxNotaryServers)
	}
	now := spec.AsTimestamp(time.Now())
	queries := make(map[spec.ServerName]notaryQuery, len(*body.ServerKeys))
	for name, keys := range *body.ServerKeys {
		server := spec.ServerName(name)
		if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
			// No server by that name can answer; say nothing of it.
			continue
		}
		q := notaryQuery{minValidUntil: now}
		for id, criteria := range keys {
			q.keyIDs = append(q.keyIDs, gomatrixserverlib.KeyID(id))
			if c := criteria.MinimumValidUntilTS; c != nil && *c > 0 && spec.Timestamp(*c) > q.minValidUntil {
				q.minValidUntil = spec.Timestamp(*c)
			}
		}
		queries[server] = q
	}
	return f.writeNotaryResponse(w, r, queries)
}

func (f *FederationAPI) writeNotaryResponse(w http.ResponseWriter, r *http.Request, queries map[spec.ServerName]notaryQuery) error {
	responses := make([]json.RawMessage, 0, len(queries))
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		sem  = make(chan struct{}, notaryParallel)
		fail error
	)
	for server, q := range queries {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			raw, err := f.notaryKeys(r.Context(), server, q)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if fail == nil {
					fail = err
				}
				return
			}
			if raw != nil {
				responses = append(responses, raw)
			}
		}()
	}
	wg.Wait()
	if fail != nil {
		return fail
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"server_keys": responses})
	return nil
}

// notaryKeys returns one server's key response signed by it and by us, or
// nil when we have none and cannot get one. Errors are our own (database).
func (f *FederationAPI) notaryKeys(ctx context.Context, server spec.ServerName, q notaryQuery) (json.RawMessage, error) {
	if server == f.own.name {
		return f.own.response(time.Now())
	}
	cached, err := f.store.keyResponse(ctx, server)
	if err != nil {
		return nil, err
	}
	raw := []byte(nil)
	if cached != nil {
		raw = cached.Raw
	}
	if cached == nil || !cached.servable(time.Now(), q) {
		keys, err := f.keyFetch.GetServerKeys(ctx, server)
		if err == nil {
			raw = keys.Raw
			// What the notary learnt serves the key ring too.
			if err := f.keys.StoreKeys(ctx, lookupResults(keys)); err != nil {
				return nil, err
			}
		} else if ctx.Err() == nil {
			logrus.WithError(err).WithField("server", server).Debug("notary: could not fetch keys")
		}
	}
	if raw == nil {
		return nil, nil
	}
	signed, err := f.own.sign(raw)
	if err != nil {
		// A stored response that is no longer a JSON object: skip it.
		logrus.WithError(err).WithField("server", server).Warn("notary: cannot sign a stored key response")
		return nil, nil
	}
	return signed, nil
}

// servable reports whether a cached response may be served for q without
// asking the server again.
func (c *keyResponse) servable(now time.Time, q notaryQuery) bool {
	if c.ValidUntil < q.minValidUntil {
		return false
	}
	half := c.Fetched + (c.ValidUntil-c.Fetched)/2
	if c.ValidUntil < c.Fetched || spec.AsTimestamp(now) >= half {
		return false
	}
	if len(q.keyIDs) == 0 {
		return true
	}
	var fields gomatrixserverlib.ServerKeyFields
	if json.Unmarshal(c.Raw, &fields) != nil {
		return false
	}
	for _, id := range q.keyIDs {
		_, current := fields.VerifyKeys[id]
		_, old := fields.OldVerifyKeys[id]
		if !current && !old {
			return false
		}
	}
	return true
}
