package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Server discovery, as the server-server spec's "Resolving server names"
// describes it. gomatrixserverlib's resolver follows the same steps, but
// fetches /.well-known with a client of its own (so our extra CA is not
// trusted there) and caches results until a request fails, whatever the
// well-known response's cache headers say; hence this one.

// target is one place to send a server's requests.
type target struct {
	// Addr is the host:port to connect to.
	Addr string
	// Host is the Host header to send.
	Host string
	// TLSName is the name the certificate must be valid for; an IP
	// address sends no SNI.
	TLSName string
}

// Well-known caching, per the spec's recommendations: the response's
// cache headers within [min, max], a day without them; errors for an hour,
// or, while the server keeps failing to answer at all, for a time that
// doubles from a few minutes.
const (
	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	wellKnownMinTTL     = 5 * time.Minute
	wellKnownErrorTTL   = time.Hour
	wellKnownRetryFirst = 2 * time.Minute
	wellKnownMaxSize    = 50 << 10
	wellKnownTimeout    = 10 * time.Second
	// resolveTTL bounds how long SRV answers are reused.
	resolveTTL = 10 * time.Minute
	// resolverCacheSize bounds each cache.
	resolverCacheSize = 10000
)

type resolver struct {
	// lookupSRV is net.DefaultResolver.LookupSRV outside tests.
	lookupSRV func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	// wellKnown fetches https://host/.well-known/matrix/server.
	wellKnown func(ctx context.Context, host string) (*http.Response, error)
	now       func() time.Time

	mu       sync.Mutex
	resolved map[spec.ServerName]resolvedEntry
	known    map[string]wellKnownEntry
}

type resolvedEntry struct {
	targets []target
	expires time.Time
}

type wellKnownEntry struct {
	delegated spec.ServerName // "" when there is no usable well-known
	expires   time.Time
	failures  int // consecutive failures to get any answer
}

func newResolver(wellKnownClient *http.Client) *resolver {
	return &resolver{
		lookupSRV: net.DefaultResolver.LookupSRV,
		wellKnown: func(ctx context.Context, host string) (*http.Response, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/matrix/server", nil)
			if err != nil {
				return nil, err
			}
			return wellKnownClient.Do(req)
		},
		now:      time.Now,
		resolved: make(map[spec.ServerName]resolvedEntry),
		known:    make(map[string]wellKnownEntry),
	}
}

// resolve returns where to send requests for a server, best first.
func (r *resolver) resolve(ctx context.Context, name spec.ServerName) ([]target, error) {
	host, port, ok := spec.ParseAndValidateServerName(name)
	if !ok {
		return nil, fmt.Errorf("invalid server name %q", name)
	}
	// 1. An IP literal, with its port or 8448.
	if ip := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"); net.ParseIP(ip) != nil {
		return []target{{Addr: net.JoinHostPort(ip, portOr(port)), Host: string(name), TLSName: ip}}, nil
	}
	// 2. A hostname with an explicit port.
	if port >= 0 {
		return []target{{Addr: net.JoinHostPort(host, strconv.Itoa(port)), Host: string(name), TLSName: host}}, nil
	}
	now := r.now()
	r.mu.Lock()
	if e, ok := r.resolved[name]; ok && now.Before(e.expires) {
		r.mu.Unlock()
		return e.targets, nil
	}
	r.mu.Unlock()

	// 3. /.well-known delegation.
	delegated, wkExpires := r.lookupWellKnown(ctx, host)
	var targets []target
	if delegated != "" {
		dhost, dport, _ := spec.ParseAndValidateServerName(delegated)
		switch ip := strings.TrimSuffix(strings.TrimPrefix(dhost, "["), "]"); {
		case net.ParseIP(ip) != nil: // 3.1
			targets = []target{{Addr: net.JoinHostPort(ip, portOr(dport)), Host: string(delegated), TLSName: ip}}
		case dport >= 0: // 3.2
			targets = []target{{Addr: net.JoinHostPort(dhost, strconv.Itoa(dport)), Host: string(delegated), TLSName: dhost}}
		default: // 3.3 to 3.5
			targets = r.srvTargets(ctx, dhost)
		}
	} else {
		// 4 to 6.
		targets = r.srvTargets(ctx, host)
	}
	if ctx.Err() != nil {
		// A cancelled lookup says nothing about the server.
		return nil, ctx.Err()
	}
	expires := now.Add(resolveTTL)
	if wkExpires.Before(expires) {
		expires = wkExpires
	}
	r.mu.Lock()
	if len(r.resolved) >= resolverCacheSize {
		clear(r.resolved)
	}
	r.resolved[name] = resolvedEntry{targets: targets, expires: expires}
	r.mu.Unlock()
	return targets, nil
}

// forget drops what was resolved for a server (not its well-known), after
// none of its targets answered.
func (r *resolver) forget(name spec.ServerName) {
	r.mu.Lock()
	delete(r.resolved, name)
	r.mu.Unlock()
}

func portOr(port int) string {
	if port < 0 {
		return "8448"
	}
	return strconv.Itoa(port)
}

// srvTargets follows _matrix-fed._tcp, then the deprecated _matrix._tcp
// SRV records of host, or else host:8448. The certificate and Host header
// are for host in every case.
func (r *resolver) srvTargets(ctx context.Context, host string) []target {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, records, err := r.lookupSRV(ctx, service, "tcp", host)
		if err != nil || len(records) == 0 {
			continue
		}
		var targets []target
		for _, rec := range records {
			t := strings.TrimSuffix(rec.Target, ".")
			if t == "" { // "." means the service is not offered
				continue
			}
			targets = append(targets, target{Addr: net.JoinHostPort(t, strconv.Itoa(int(rec.Port))), Host: host, TLSName: host})
		}
		if len(targets) > 0 {
			return targets
		}
	}
	return []target{{Addr: net.JoinHostPort(host, "8448"), Host: host, TLSName: host}}
}

// lookupWellKnown returns the server host delegates to ("" for none) and
// until when that answer holds.
func (r *resolver) lookupWellKnown(ctx context.Context, host string) (spec.ServerName, time.Time) {
	now := r.now()
	r.mu.Lock()
	prev, ok := r.known[host]
	r.mu.Unlock()
	if ok && now.Before(prev.expires) {
		return prev.delegated, prev.expires
	}
	delegated, ttl, answered := r.fetchWellKnown(ctx, host)
	if ctx.Err() != nil {
		return "", now
	}
	e := wellKnownEntry{delegated: delegated, expires: now.Add(ttl)}
	if !answered {
		// No answer at all (connection refused, timeout): back off.
		e.failures = prev.failures + 1
		backoff := wellKnownRetryFirst << min(e.failures-1, 10)
		e.expires = now.Add(min(backoff, wellKnownErrorTTL))
	}
	r.mu.Lock()
	if len(r.known) >= resolverCacheSize {
		clear(r.known)
	}
	r.known[host] = e
	r.mu.Unlock()
	return e.delegated, e.expires
}

// fetchWellKnown fetches and parses the well-known file. answered is false
// when no HTTP response came back at all.
func (r *resolver) fetchWellKnown(ctx context.Context, host string) (delegated spec.ServerName, ttl time.Duration, answered bool) {
	ctx, cancel := context.WithTimeout(ctx, wellKnownTimeout)
	defer cancel()
	resp, err := r.wellKnown(ctx, host)
	if err != nil {
		return "", 0, false
	}
	defer resp.Body.Close()
	ttl = cacheTTL(resp.Header, r.now())
	if resp.StatusCode != http.StatusOK {
		return "", wellKnownErrorTTL, true
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxSize+1))
	if err != nil || len(body) > wellKnownMaxSize {
		return "", wellKnownErrorTTL, true
	}
	var wk struct {
		Server string `json:"m.server"`
	}
	if json.Unmarshal(body, &wk) != nil {
		return "", wellKnownErrorTTL, true
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(wk.Server)); !ok {
		return "", wellKnownErrorTTL, true
	}
	return spec.ServerName(wk.Server), ttl, true
}

// cacheTTL reads Cache-Control max-age (preferred) or Expires, within the
// well-known bounds.
func cacheTTL(h http.Header, now time.Time) time.Duration {
	ttl := wellKnownDefaultTTL
	found := false
	for _, directive := range strings.Split(h.Get("Cache-Control"), ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(name) {
		case "max-age":
			if secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && secs >= 0 {
				ttl, found = time.Duration(min(secs, int64(wellKnownMaxTTL/time.Second)))*time.Second, true
			}
		case "no-store", "no-cache":
			ttl, found = 0, true
		}
	}
	if !found {
		if exp, err := http.ParseTime(h.Get("Expires")); err == nil {
			ttl = exp.Sub(now)
		}
	}
	return min(max(ttl, wellKnownMinTTL), wellKnownMaxTTL)
}

// errNoTargets is returned when a server name resolves to nothing usable.
var errNoTargets = errors.New("no address to send to")
