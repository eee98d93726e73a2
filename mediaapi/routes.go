package mediaapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// AuthedHandler is a handler for a logged-in device.
type AuthedHandler = func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error

// Register adds the client-facing media routes; authed wraps a handler
// with the client API's access token check and rate limit.
func (m *MediaAPI) Register(root *mux.Router, authed func(AuthedHandler) http.Handler) {
	const legacy = "/_matrix/media/{apiVersion:(?:r0|v3)}"
	const client = "/_matrix/client/v1/media"

	root.Handle(legacy+"/upload", authed(m.upload)).Methods(http.MethodPost)
	root.Handle("/_matrix/media/v1/create", authed(m.create)).Methods(http.MethodPost)
	root.Handle(legacy+"/upload/{serverName}/{mediaId}", authed(m.uploadPending)).Methods(http.MethodPut)

	// Authenticated downloads (spec v1.11) and the deprecated
	// unauthenticated ones, which other servers also fall back to.
	for _, p := range []string{"/download/{serverName}/{mediaId}", "/download/{serverName}/{mediaId}/{fileName}"} {
		root.Handle(client+p, authed(func(w http.ResponseWriter, r *http.Request, _ *accounts.Session) error {
			return m.download(w, r)
		})).Methods(http.MethodGet, http.MethodHead)
		root.Handle(legacy+p, m.public(m.download)).Methods(http.MethodGet, http.MethodHead)
	}
	root.Handle(client+"/thumbnail/{serverName}/{mediaId}", authed(func(w http.ResponseWriter, r *http.Request, _ *accounts.Session) error {
		return m.thumbnail(w, r)
	})).Methods(http.MethodGet, http.MethodHead)
	root.Handle(legacy+"/thumbnail/{serverName}/{mediaId}", m.public(m.thumbnail)).Methods(http.MethodGet, http.MethodHead)

	for _, prefix := range []string{client, legacy} {
		root.Handle(prefix+"/config", authed(m.config)).Methods(http.MethodGet)
		root.Handle(prefix+"/preview_url", authed(m.previewURL)).Methods(http.MethodGet)
	}

	const admin = "/_plexus/admin/v1/media/{serverName}/{mediaId}"
	root.Handle(admin+"/quarantine", authed(m.adminQuarantine(true))).Methods(http.MethodPost)
	root.Handle(admin+"/unquarantine", authed(m.adminQuarantine(false))).Methods(http.MethodPost)
	root.Handle(admin, authed(m.adminDelete)).Methods(http.MethodDelete)
}

// public wraps an unauthenticated handler with the per-IP rate limit.
func (m *MediaAPI) public(h httputil.Handler) http.Handler {
	return httputil.Handler(func(w http.ResponseWriter, r *http.Request) error {
		if err := m.downloadLimit.Check(httputil.ClientIP(r)); err != nil {
			return err
		}
		return h(w, r)
	})
}

func (m *MediaAPI) config(w http.ResponseWriter, r *http.Request, _ *accounts.Session) error {
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"m.upload.size": m.cfg.MaxUploadSize})
	return nil
}
