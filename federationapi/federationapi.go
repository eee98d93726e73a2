// Package federationapi is Plexus's side of the server-server API: it
// publishes our signing keys (/_matrix/key/v2/server) and serves as a
// notary for others' (/_matrix/key/v2/query), keeps the key ring that
// verifies other servers' signatures, makes outbound federation requests
// (server discovery, TLS, signing) and authenticates inbound ones
// (X-Matrix), handing verified requests to the handlers other components
// register with Handle. See README.md.
package federationapi

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/signingkey"
	"github.com/plexus-chat/plexus/internal/version"
	"github.com/plexus-chat/plexus/storage"
)

// Overall timeouts of outbound requests; a request's context may end it
// sooner. Federation requests get long, since a send_join to a large room
// answers with its whole state.
const (
	federationTimeout = 2 * time.Minute
	keyClientTimeout  = 30 * time.Second
)

// FederationAPI is the federation component.
type FederationAPI struct {
	own      *ownKeys
	store    keyStore
	keys     *keyDatabase
	keyFetch *keyClient
	keyRing  *gomatrixserverlib.KeyRing

	transport *transport
	client    *fclient.Client
	fedClient fclient.FederationClient

	routes []route
	root   *mux.Router

	// remoteKeys is set by NewRemoteKeys (keys_leave.go uses it).
	remoteKeys *RemoteKeys
}

// Handler is an authenticated federation endpoint: it runs only for a
// request whose X-Matrix signature verified. req holds the method, URI,
// origin and JSON content that were signed (the body is also left readable
// in r.Body); origin is the verified sending server. A returned
// *httputil.Error is written as a Matrix error, anything else as 500.
type Handler func(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error

type route struct {
	path    string
	h       http.Handler
	methods []string
}

// New builds the federation component: it runs its migrations, loads the
// CA file, builds the clients and the key ring.
func New(ctx context.Context, cfg *config.Config, db *storage.DB, key *signingkey.Key) (*FederationAPI, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	name := spec.ServerName(cfg.ServerName)
	own, err := newOwnKeys(name, key, time.Duration(cfg.Federation.KeyValidity), cfg.Federation.OldSigningKeys)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := tlsConfig(cfg.Path(cfg.Federation.CAFile), cfg.Federation.InsecureSkipVerify)
	if err != nil {
		return nil, err
	}
	if cfg.Federation.InsecureSkipVerify {
		logrus.Warn("federation.insecure_skip_verify is on: this server accepts ANY TLS certificate from other servers; " +
			"anyone on the network path can impersonate them. Use it only for test deployments")
	}
	t := newTransport(tlsCfg)
	ua := "Plexus/" + version.String()
	f := &FederationAPI{
		own:       own,
		store:     keyStore{db: db},
		transport: t,
		client:    fclient.NewClient(fclient.WithTransport(t), fclient.WithTimeout(keyClientTimeout), fclient.WithUserAgent(ua)),
		fedClient: fclient.NewFederationClient([]*fclient.SigningIdentity{{
			ServerName: name, KeyID: gomatrixserverlib.KeyID(key.ID), PrivateKey: key.PrivateKey,
		}}, fclient.WithTransport(t), fclient.WithTimeout(federationTimeout), fclient.WithUserAgent(ua)),
	}
	f.keys = newKeyDatabase(own, f.store)
	f.keyFetch = &keyClient{client: f.client, store: f.store, self: name, now: time.Now, fetches: map[spec.ServerName]*keyFetch{}}
	fetchers := []gomatrixserverlib.KeyFetcher{&gomatrixserverlib.DirectKeyFetcher{
		Client:            f.keyFetch,
		IsLocalServerName: func(s spec.ServerName) bool { return s == name },
		LocalPublicKey:    spec.Base64Bytes(own.public),
	}}
	for _, notary := range cfg.Federation.TrustedKeyServers {
		fetchers = append(fetchers, &perspectiveFetcher{notary: spec.ServerName(notary), client: f.keyFetch})
	}
	f.keyRing = &gomatrixserverlib.KeyRing{KeyFetchers: fetchers, KeyDatabase: f.keys}
	return f, nil
}

// ServerName is our server name.
func (f *FederationAPI) ServerName() spec.ServerName { return f.own.name }

// KeyID is the ID of the key we sign with.
func (f *FederationAPI) KeyID() gomatrixserverlib.KeyID { return f.own.keyID }

// PrivateKey is the key we sign with.
func (f *FederationAPI) PrivateKey() ed25519.PrivateKey { return f.own.private }

// KeyRing verifies other servers' signatures (events, requests), fetching
// and caching their keys as needed. Pass it wherever gomatrixserverlib
// wants a JSONVerifier.
func (f *FederationAPI) KeyRing() gomatrixserverlib.JSONVerifier { return f.keyRing }

// KeyRingVia is the key ring with one more notary asked last: the server
// we are joining a room through. A room's state holds events of servers
// that may be down or gone; the resident server verified their keys when
// those events reached it and serves them as a notary, signed with its own
// key, which we fetch from it over TLS. Without it their members would be
// missing from the state we accept.
func (f *FederationAPI) KeyRingVia(server spec.ServerName) gomatrixserverlib.JSONVerifier {
	if server == f.own.name {
		return f.keyRing
	}
	fetchers := append(slices.Clone(f.keyRing.KeyFetchers), &perspectiveFetcher{notary: server, client: f.keyFetch})
	return &gomatrixserverlib.KeyRing{KeyFetchers: fetchers, KeyDatabase: f.keys}
}

// Client makes signed federation requests from this server. Its methods
// take the origin: pass ServerName().
func (f *FederationAPI) Client() fclient.FederationClient { return f.fedClient }

// KeyClient makes unsigned requests to other servers (/_matrix/key/*,
// /version) over the same discovery and TLS settings.
func (f *FederationAPI) KeyClient() *fclient.Client { return f.client }

// DoSigned sends a request signed by this server to destination and
// returns the response, whatever its status; the caller closes its body.
// content, when not nil, is sent as JSON. Use it for endpoints the typed
// Client does not cover.
func (f *FederationAPI) DoSigned(ctx context.Context, method string, destination spec.ServerName, path string, content any) (*http.Response, error) {
	req := fclient.NewFederationRequest(method, f.own.name, destination, path)
	if content != nil {
		if err := req.SetContent(content); err != nil {
			return nil, err
		}
	}
	if err := req.Sign(f.own.name, f.own.keyID, f.own.private); err != nil {
		return nil, err
	}
	hreq, err := req.HTTPRequest()
	if err != nil {
		return nil, err
	}
	return f.client.DoHTTPRequest(ctx, hreq)
}

// Close releases idle outbound connections.
func (f *FederationAPI) Close() { f.transport.closeIdle() }

// Authed wraps h with X-Matrix authentication, for components that
// register federation routes on the router themselves.
func (f *FederationAPI) Authed(h Handler) http.Handler {
	return httputil.Handler(func(w http.ResponseWriter, r *http.Request) error {
		req, err := f.verifyRequest(r)
		if err != nil {
			return err
		}
		return h(w, r, req, req.Origin())
	})
}

// Handle registers an authenticated federation endpoint, such as
//
//	fed.Handle("/_matrix/federation/v1/send/{txnID}", handleSend, http.MethodPut)
//
// path is a gorilla/mux template under /_matrix/federation/; read its
// variables with httputil.Vars. Call it before the server starts serving;
// routes are added to the router by Register, or at once if Register has
// already run.
func (f *FederationAPI) Handle(path string, h Handler, methods ...string) {
	f.handle(path, f.Authed(h), methods)
}

// HandlePublic registers an unauthenticated endpoint under
// /_matrix/federation/ (such as the OpenID userinfo endpoint), on the same
// terms as Handle.
func (f *FederationAPI) HandlePublic(path string, h httputil.Handler, methods ...string) {
	f.handle(path, h, methods)
}

func (f *FederationAPI) handle(path string, h http.Handler, methods []string) {
	if !strings.HasPrefix(path, "/_matrix/federation/") {
		panic("federationapi: route " + path + " is not under /_matrix/federation/")
	}
	if len(methods) == 0 {
		panic("federationapi: route " + path + " has no methods")
	}
	r := route{path: path, h: h, methods: methods}
	f.routes = append(f.routes, r)
	if f.root != nil {
		f.root.Handle(r.path, r.h).Methods(r.methods...)
	}
}

// Register adds the key and federation routes to root.
func (f *FederationAPI) Register(root *mux.Router) {
	root.Handle("/_matrix/key/v2/server", httputil.Handler(f.serverKeys)).Methods(http.MethodGet)
	// The key ID form is deprecated; the answer is the same.
	root.Handle("/_matrix/key/v2/server/{keyID}", httputil.Handler(f.serverKeys)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/query/{serverName}", httputil.Handler(f.queryKeysGET)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/query", httputil.Handler(f.queryKeysPOST)).Methods(http.MethodPost)
	root.Handle("/_matrix/federation/v1/version", httputil.Handler(f.version)).Methods(http.MethodGet)
	for _, r := range f.routes {
		root.Handle(r.path, r.h).Methods(r.methods...)
	}
	f.root = root
}

func (f *FederationAPI) version(w http.ResponseWriter, r *http.Request) error {
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"server": map[string]string{"name": "Plexus", "version": version.String()},
	})
	return nil
}

// serverKeys serves GET /_matrix/key/v2/server.
func (f *FederationAPI) serverKeys(w http.ResponseWriter, r *http.Request) error {
	resp, err := f.own.response(time.Now())
	if err != nil {
		return err
	}
	writeRawJSON(w, resp)
	return nil
}

func writeRawJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
