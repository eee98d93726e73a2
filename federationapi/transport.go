package federationapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Timeouts of outbound federation traffic. Every request also ends with
// the client's overall timeout or its context.
const (
	dialTimeout         = 10 * time.Second
	tlsHandshakeTimeout = 10 * time.Second
	idleConnTimeout     = 90 * time.Second
	// transportIdleLife is how long the connection pool of an unused TLS
	// name is kept.
	transportIdleLife = 5 * time.Minute
)

// tlsConfig is the client TLS configuration for every outbound connection:
// the system's trusted CAs plus those in caFile, or no verification at all
// when insecure.
func tlsConfig(caFile string, insecure bool) (*tls.Config, error) {
	// Without a CA file, nil RootCAs means the system's roots, which Go
	// then loads at the first handshake rather than at start (0.4 MB).
	var pool *x509.CertPool
	if caFile != "" {
		var err error
		if pool, err = x509.SystemCertPool(); err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("federation.ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("federation.ca_file %s: no PEM certificates in it", caFile)
		}
	}
	return &tls.Config{
		RootCAs:            pool,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: insecure, //nolint:gosec // federation.insecure_skip_verify, for test deployments; logged at start
	}, nil
}

// transport is the http.RoundTripper under both federation clients. It
// takes requests for matrix://<server name>/path (as gomatrixserverlib's
// clients make them), resolves the server name, and sends the request over
// HTTPS to each target in turn with the Host header and certificate name
// discovery chose. Connections are pooled per certificate name, since a
// pool shares one TLS configuration.
type transport struct {
	base     *tls.Config
	resolver *resolver
	dialer   *net.Dialer

	mu       sync.Mutex
	pools    map[string]*pooledTransport
	lastReap time.Time
}

type pooledTransport struct {
	*http.Transport
	lastUsed time.Time
}

func newTransport(base *tls.Config) *transport {
	t := &transport{
		base:   base,
		dialer: &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second},
		pools:  make(map[string]*pooledTransport),
	}
	wellKnown := &http.Client{
		Timeout: wellKnownTimeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         t.dialer.DialContext,
			TLSClientConfig:     base.Clone(),
			TLSHandshakeTimeout: tlsHandshakeTimeout,
			IdleConnTimeout:     idleConnTimeout,
			MaxIdleConnsPerHost: 1,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	t.resolver = newResolver(wellKnown)
	return t
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "matrix" && req.URL.Scheme != "matrix-federation" {
		return nil, fmt.Errorf("federation transport: unsupported URL scheme %q", req.URL.Scheme)
	}
	name := spec.ServerName(req.URL.Host)
	// A body can be sent again only if the request can make a new one.
	canRetry := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	var lastErr error
	first := true
	for attempt := 0; attempt < 2; attempt++ {
		targets, err := t.resolver.resolve(req.Context(), name)
		if err != nil {
			return nil, err
		}
		if len(targets) == 0 {
			return nil, errNoTargets
		}
		for _, tg := range targets {
			out := req.Clone(req.Context())
			out.URL.Scheme = "https"
			out.URL.Host = tg.Addr
			out.Host = tg.Host
			if !first {
				if !canRetry {
					return nil, lastErr
				}
				if req.GetBody != nil {
					body, err := req.GetBody()
					if err != nil {
						return nil, err
					}
					out.Body = body
				}
			}
			first = false
			resp, err := t.pool(tg.TLSName).RoundTrip(out)
			if err == nil {
				return resp, nil
			}
			lastErr = err
			if req.Context().Err() != nil {
				return nil, err
			}
		}
		// No target answered: discovery may be out of date.
		t.resolver.forget(name)
	}
	return nil, lastErr
}

// pool returns the transport for connections whose certificate must be
// valid for tlsName, and now and then closes those unused for a while.
func (t *transport) pool(tlsName string) *pooledTransport {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if now.Sub(t.lastReap) > time.Minute {
		for name, p := range t.pools {
			if now.Sub(p.lastUsed) > transportIdleLife {
				p.CloseIdleConnections()
				delete(t.pools, name)
			}
		}
		t.lastReap = now
	}
	p, ok := t.pools[tlsName]
	if !ok {
		cfg := t.base.Clone()
		cfg.ServerName = tlsName
		p = &pooledTransport{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           t.dialer.DialContext,
			TLSClientConfig:       cfg,
			TLSHandshakeTimeout:   tlsHandshakeTimeout,
			IdleConnTimeout:       idleConnTimeout,
			MaxIdleConnsPerHost:   4,
			ExpectContinueTimeout: time.Second,
			ForceAttemptHTTP2:     true,
		}}
		t.pools[tlsName] = p
	}
	p.lastUsed = now
	return p
}

// closeIdle closes every pooled idle connection.
func (t *transport) closeIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.pools {
		p.CloseIdleConnections()
	}
}
