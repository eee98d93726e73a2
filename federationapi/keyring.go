package federationapi

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
)

// The key ring is gomatrixserverlib's KeyRing over three parts of ours:
//
//   - keyDatabase: our own keys (never fetched), then a small memory cache,
//     then the federationapi_server_keys table;
//   - a DirectKeyFetcher asking the server itself, through keyClient;
//   - one perspectiveFetcher per trusted key server (notary).
//
// gomatrixserverlib decides when a cached key is too old (past its
// valid_until_ts) and asks the fetchers in order; what they find is
// stored back through keyDatabase.StoreKeys.

// memCacheSize bounds the memory cache of other servers' keys.
const memCacheSize = 4096

type lookupRequest = gomatrixserverlib.PublicKeyLookupRequest
type lookupResult = gomatrixserverlib.PublicKeyLookupResult

// keyDatabase is the key ring's KeyDatabase.
type keyDatabase struct {
	own   *ownKeys
	store keyStore

	mu  sync.RWMutex
	mem map[lookupRequest]lookupResult
}

var _ gomatrixserverlib.KeyDatabase = (*keyDatabase)(nil)

func newKeyDatabase(own *ownKeys, store keyStore) *keyDatabase {
	return &keyDatabase{own: own, store: store, mem: make(map[lookupRequest]lookupResult)}
}

func (d *keyDatabase) FetcherName() string { return "database" }

// FetchKeys returns what it has of the requested keys, however old:
// the key ring checks their validity itself.
func (d *keyDatabase) FetchKeys(ctx context.Context, requests map[lookupRequest]spec.Timestamp) (map[lookupRequest]lookupResult, error) {
	results := make(map[lookupRequest]lookupResult, len(requests))
	var misses []lookupRequest
	d.mu.RLock()
	for req := range requests {
		if req.ServerName == d.own.name {
			if res, ok := d.own.lookup(req.KeyID); ok {
				results[req] = res
			}
			continue
		}
		if res, ok := d.mem[req]; ok {
			results[req] = res
			continue
		}
		misses = append(misses, req)
	}
	d.mu.RUnlock()
	for _, req := range misses {
		res, ok, err := d.store.serverKey(ctx, req)
		if err != nil {
			return nil, err
		}
		if ok {
			results[req] = res
			d.remember(req, res)
		}
	}
	return results, nil
}

// StoreKeys saves keys found by the fetchers. Our own keys are never
// stored: they come from the signing key and the config.
func (d *keyDatabase) StoreKeys(ctx context.Context, results map[lookupRequest]lookupResult) error {
	keep := make(map[lookupRequest]lookupResult, len(results))
	for req, res := range results {
		if req.ServerName == d.own.name || len(res.Key) != ed25519.PublicKeySize {
			continue
		}
		keep[req] = res
	}
	if err := d.store.storeServerKeys(ctx, keep); err != nil {
		return err
	}
	// The table may have kept a better row than one of these (the upsert
	// never shortens a key's validity): forget them, so the next lookup
	// reads what was kept.
	d.mu.Lock()
	for req := range keep {
		delete(d.mem, req)
	}
	d.mu.Unlock()
	return nil
}

func (d *keyDatabase) remember(req lookupRequest, res lookupResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.mem) >= memCacheSize {
		// Drop an arbitrary quarter; the table still has them.
		n := 0
		for k := range d.mem {
			delete(d.mem, k)
			if n++; n >= memCacheSize/4 {
				break
			}
		}
	}
	d.mem[req] = res
}

// keyClient fetches servers' keys for the key ring and the notary. Direct
// fetches of /_matrix/key/v2/server are shared between concurrent callers,
// remembered (success or failure) for refetchInterval so that requests
// naming a server cannot make us hammer it, and their verbatim responses
// are stored for the notary endpoints to serve again.
type keyClient struct {
	client *fclient.Client
	store  keyStore
	self   spec.ServerName
	now    func() time.Time

	mu      sync.Mutex
	fetches map[spec.ServerName]*keyFetch
}

// refetchInterval is the shortest time between two direct fetches of one
// server's keys.
const refetchInterval = 30 * time.Second

// directFetchTimeout bounds one direct fetch of a server's keys.
const directFetchTimeout = 15 * time.Second

// keyFetch is one direct fetch; its fields are set before done closes.
type keyFetch struct {
	done chan struct{}
	at   time.Time
	keys gomatrixserverlib.ServerKeys
	err  error
}

var _ gomatrixserverlib.KeyClient = (*keyClient)(nil)

// GetServerKeys fetches a server's own key response, checked: it must name
// the server, be signed by every ed25519 key it lists and be valid now.
func (c *keyClient) GetServerKeys(ctx context.Context, server spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	if server == c.self {
		return gomatrixserverlib.ServerKeys{}, errors.New("federationapi: refusing to fetch our own keys")
	}
	c.mu.Lock()
	f := c.fetches[server]
	if f != nil && f.finished() && c.now().Sub(f.at) >= refetchInterval {
		f = nil
	}
	if f == nil {
		f = &keyFetch{done: make(chan struct{})}
		if len(c.fetches) >= memCacheSize {
			c.reapLocked()
		}
		c.fetches[server] = f
		c.mu.Unlock()
		f.keys, f.err = c.fetch(server)
		f.at = c.now()
		close(f.done)
		return f.keys, f.err
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.keys, f.err
	case <-ctx.Done():
		return gomatrixserverlib.ServerKeys{}, ctx.Err()
	}
}

func (f *keyFetch) finished() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// fetch runs on its own context: callers sharing it may give up, the
// fetch still completes and is stored.
func (c *keyClient) fetch(server spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	ctx, cancel := context.WithTimeout(context.Background(), directFetchTimeout)
	defer cancel()
	keys, err := c.client.GetServerKeys(ctx, server)
	if err != nil {
		return keys, err
	}
	if checks, _ := gomatrixserverlib.CheckKeys(server, c.now(), keys); !checks.AllChecksOK {
		return gomatrixserverlib.ServerKeys{}, fmt.Errorf("federationapi: key response from %s failed checks", server)
	}
	// The TLS connection vouched for this response: keep it verbatim for
	// the notary endpoints.
	err = c.store.storeKeyResponse(ctx, server, keyResponse{ValidUntil: keys.ValidUntilTS, Fetched: spec.AsTimestamp(c.now()), Raw: keys.Raw})
	if err != nil {
		logrus.WithError(err).WithField("server", server).Warn("could not store a server's key response")
	}
	return keys, nil
}

func (c *keyClient) reapLocked() {
	now := c.now()
	for name, f := range c.fetches {
		if f.finished() && now.Sub(f.at) >= refetchInterval {
			delete(c.fetches, name)
		}
	}
	// Still full of recent fetches: forget finished ones early rather
	// than grow without bound.
	for name, f := range c.fetches {
		if len(c.fetches) < memCacheSize*3/4 {
			break
		}
		if f.finished() {
			delete(c.fetches, name)
		}
	}
}

// LookupServerKeys asks a notary; it is not shared or remembered.
func (c *keyClient) LookupServerKeys(ctx context.Context, notary spec.ServerName, requests map[lookupRequest]spec.Timestamp) ([]gomatrixserverlib.ServerKeys, error) {
	return c.client.LookupServerKeys(ctx, notary, requests)
}

// perspectiveFetcher asks one notary (a trusted key server) for keys. The
// notary's own keys, which its answers must be signed with, are fetched
// directly from it over verified TLS and kept until they need refreshing:
// trusting a notary is trusting its TLS certificate.
type perspectiveFetcher struct {
	notary spec.ServerName
	client *keyClient

	mu         sync.Mutex
	keys       map[gomatrixserverlib.KeyID]ed25519.PublicKey
	validUntil time.Time
}

func (p *perspectiveFetcher) FetcherName() string { return "notary " + string(p.notary) }

func (p *perspectiveFetcher) FetchKeys(ctx context.Context, requests map[lookupRequest]spec.Timestamp) (map[lookupRequest]lookupResult, error) {
	keys, err := p.notaryKeys(ctx)
	if err != nil {
		return nil, err
	}
	f := gomatrixserverlib.PerspectiveKeyFetcher{PerspectiveServerName: p.notary, PerspectiveServerKeys: keys, Client: p.client}
	return f.FetchKeys(ctx, requests)
}

// notaryKeyLifetime caps how long the notary's own keys are trusted
// without fetching them again.
const notaryKeyLifetime = 24 * time.Hour

func (p *perspectiveFetcher) notaryKeys(ctx context.Context) (map[gomatrixserverlib.KeyID]ed25519.PublicKey, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.client.now()
	if p.keys != nil && now.Before(p.validUntil) {
		return p.keys, nil
	}
	resp, err := p.client.GetServerKeys(ctx, p.notary)
	if err != nil {
		return nil, fmt.Errorf("keys of notary %s: %w", p.notary, err)
	}
	keys := make(map[gomatrixserverlib.KeyID]ed25519.PublicKey, len(resp.VerifyKeys))
	for id, k := range resp.VerifyKeys {
		keys[id] = ed25519.PublicKey(k.Key)
	}
	p.keys = keys
	p.validUntil = now.Add(notaryKeyLifetime)
	if until := resp.ValidUntilTS.Time(); until.Before(p.validUntil) {
		p.validUntil = until
	}
	return keys, nil
}

// lookupResults turns a server's checked key response into key ring
// results, as gomatrixserverlib's fetchers do.
func lookupResults(keys gomatrixserverlib.ServerKeys) map[lookupRequest]lookupResult {
	out := make(map[lookupRequest]lookupResult, len(keys.VerifyKeys)+len(keys.OldVerifyKeys))
	for id, k := range keys.VerifyKeys {
		out[lookupRequest{ServerName: keys.ServerName, KeyID: id}] = lookupResult{
			VerifyKey: k, ValidUntilTS: keys.ValidUntilTS, ExpiredTS: gomatrixserverlib.PublicKeyNotExpired,
		}
	}
	for id, k := range keys.OldVerifyKeys {
		if _, current := keys.VerifyKeys[id]; current {
			continue
		}
		out[lookupRequest{ServerName: keys.ServerName, KeyID: id}] = lookupResult{
			VerifyKey: k.VerifyKey, ValidUntilTS: gomatrixserverlib.PublicKeyNotValid, ExpiredTS: k.ExpiredTS,
		}
	}
	return out
}
