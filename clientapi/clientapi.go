// Package clientapi serves the client-server API (/_matrix/client/*).
// Handlers are thin: they parse the request, call a component through its
// interface and write the answer.
package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/gorilla/mux"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/keyserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// API holds what the client API handlers need.
type API struct {
	cfg      *config.Config
	accounts accounts.API
	rooms    rsapi.RoomserverAPI
	// waker wakes a user's long-polling syncs after changes the sync API
	// does not see in the room stream (account data).
	waker   UserWaker
	catchUp SyncCatchUp // nil: no waiting
	keys    *keyDeps    // nil without a key server
	openID  OpenIDTokenIssuer
	remote  RemoteMembership
	// queries is nil when federation is off.
	queries RemoteQueries
	push    PushStore
	uiaa    *uiaaSessions
	nonces  *nonceStore
	reports ReportStore // nil turns the report endpoints off (reports.go)

	// limit is the general per-client limiter, authLimit the stricter one
	// for login and registration; both nil when rate limiting is off.
	limit     *httputil.RateLimiter
	authLimit *httputil.RateLimiter

	// relations adds bundled aggregations to served events; nil: none.
	relations Relations
}

// UserWaker is the sync API's notifier as the client API sees it.
type UserWaker interface{ WakeUser(userID string) }

// SyncCatchUp lets a request that made many events wait until /sync shows
// them all (syncapi/caughtup.go).
type SyncCatchUp interface{ CaughtUp(ctx context.Context) }

// Deps are the components the client API calls. Accounts and Rooms are
// required; an absent optional one turns its endpoints off (404
// M_UNRECOGNIZED, or "other servers not reachable" for RemoteMembership).
type Deps struct {
	Accounts accounts.API
	Rooms    rsapi.RoomserverAPI
	// Waker wakes long-polling syncs after account data changes.
	Waker UserWaker
	// CatchUp, when set, makes room creation and upgrade answer only once
	// /sync shows the new room whole.
	CatchUp SyncCatchUp
	// Keys and KeyChanges serve /keys/* and /room_keys/*.
	Keys       keyserver.API
	KeyChanges KeyChanges
	// OpenID issues the tokens of /user/{userId}/openid/request_token.
	OpenID OpenIDTokenIssuer
	// RemoteMembership runs joins, leaves, knocks and invites through
	// other servers.
	RemoteMembership RemoteMembership
	// RemoteQueries asks other servers for profiles and room directories.
	RemoteQueries RemoteQueries
	// Push stores pushers and serves notifications (the sync API).
	Push PushStore
	// Relations adds bundled aggregations to /event (the sync API).
	Relations Relations
	// Reports keeps users' content reports for the admins (reports.go).
	Reports ReportStore
}

// RemoteQueries are the questions the client API relays to other servers.
type RemoteQueries interface {
	RemoteProfile(ctx context.Context, userID string) (displayName, avatarURL string, err error)
	RemotePublicRooms(ctx context.Context, server string, request any) (json.RawMessage, error)
}

// New makes the client API.
func New(cfg *config.Config, d Deps) *API {
	a := &API{cfg: cfg, accounts: d.Accounts, rooms: d.Rooms, waker: d.Waker, catchUp: d.CatchUp, uiaa: newUIAASessions(), nonces: newNonceStore(),
		openID: d.OpenID, remote: d.RemoteMembership, queries: d.RemoteQueries, push: d.Push,
		relations: d.Relations, reports: d.Reports}
	if d.Keys != nil {
		a.keys = &keyDeps{keys: d.Keys, changes: d.KeyChanges}
	}
	if cfg.RateLimit.Enabled {
		a.limit = httputil.NewRateLimiter(cfg.RateLimit.RequestsPerSecond, cfg.RateLimit.Burst)
		a.authLimit = httputil.NewRateLimiter(cfg.RateLimit.AuthPerMinute/60, cfg.RateLimit.AuthBurst)
	}
	return a
}

// Register adds the client API's routes to root.
func (a *API) Register(root *mux.Router) {
	root.Handle("/.well-known/matrix/client", httputil.Handler(a.wellKnownClient)).Methods(http.MethodGet)
	root.Handle("/.well-known/matrix/server", httputil.Handler(a.wellKnownServer)).Methods(http.MethodGet)
	root.Handle("/_matrix/client/versions", httputil.Handler(a.versions)).Methods(http.MethodGet)

	r := &router{api: a, mux: root}
	a.registerAuthRoutes(r)
	a.registerAccountRoutes(r)
	a.registerDeviceRoutes(r)
	a.registerProfileRoutes(r)
	a.registerAccountDataRoutes(r)
	a.registerFilterRoutes(r)
	a.registerCapabilitiesRoutes(r)
	a.registerRoomRoutes(r)
	a.registerOpenIDRoutes(r)
	a.registerKeyRoutes(r) // keys.go: /keys/* and /room_keys/* (end-to-end encryption)
	a.registerPushRoutes(r)
	a.registerMiscRoutes(r) // misc_routes.go: spaces, reports, tags, login tokens, 3pids, notices
	a.registerAdminRoutes(root)
}

// router registers a handler under every client API version prefix that
// clients still use for it.
type router struct {
	api *API
	mux *mux.Router
}

// Versions of the client API path prefix.
const (
	v3   = "r0|v3"
	v1   = "v1"
	unst = "unstable"
)

func (r *router) handle(versions, path string, h http.Handler, methods ...string) {
	prefix := "/_matrix/client/{apiVersion:(?:" + versions + ")}"
	r.mux.Handle(prefix+path, h).Methods(methods...)
}

// public registers a handler that needs no access token. auth marks the
// login and registration endpoints that get the stricter rate limit.
func (r *router) public(versions, path string, h httputil.Handler, strict bool, methods ...string) {
	a := r.api
	r.handle(versions, path, httputil.Handler(func(w http.ResponseWriter, req *http.Request) error {
		limiter := a.limit
		if strict {
			limiter = a.authLimit
		}
		if err := limiter.Check(httputil.ClientIP(req)); err != nil {
			return err
		}
		return h(w, req)
	}), methods...)
}

// AuthedHandler is a handler for a logged-in device.
type AuthedHandler func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error

// authed registers a handler that needs a valid access token.
func (r *router) authed(versions, path string, h AuthedHandler, methods ...string) {
	r.handle(versions, path, r.api.Authed(h), methods...)
}

// Authed wraps a handler with the access token check and the per-user
// rate limit; other components serving client endpoints (the sync API)
// use it so that authentication lives in one place.
func (a *API) Authed(h func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error) http.Handler {
	return httputil.Handler(func(w http.ResponseWriter, req *http.Request) error {
		s, err := a.authenticate(req)
		if err != nil {
			return err
		}
		if err := a.limit.Check(s.Localpart); err != nil {
			return err
		}
		return h(w, req, s)
	})
}

// accessToken finds the token in the Authorization header or, for older
// clients, the access_token query parameter.
func accessToken(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") && token != "" {
			return strings.TrimSpace(token), true
		}
		return "", false
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}

func (a *API) authenticate(r *http.Request) (*accounts.Session, error) {
	token, ok := accessToken(r)
	if !ok {
		return nil, httputil.MissingToken("Missing access token")
	}
	s, err := a.accounts.Authenticate(r.Context(), token, httputil.ClientIP(r))
	switch err {
	case nil:
		return s, nil
	case accounts.ErrTokenExpired:
		return nil, httputil.UnknownToken("Access token has expired", true)
	case accounts.ErrUnknownToken:
		return nil, httputil.UnknownToken("Unknown access token", false)
	default:
		return nil, err
	}
}

// userID is the full ID of a local user.
func (a *API) userID(localpart string) string {
	return "@" + localpart + ":" + a.cfg.ServerName
}

// syncCaughtUp waits, when the sync API offers it, until /sync shows the
// events made so far: room creation, upgrade and joins through other
// servers make a room's worth at once, and clients sync (or page back)
// right after the answer.
func (a *API) syncCaughtUp(r *http.Request) {
	if a.catchUp != nil {
		a.catchUp.CaughtUp(r.Context())
	}
}
