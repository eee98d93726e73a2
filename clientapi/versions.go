package clientapi

import (
	"net/http"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// supportedVersions lists the spec versions whose endpoints Plexus serves.
// A version is listed only when everything it requires of the endpoints
// built so far is there; later capabilities add later versions.
var supportedVersions = []string{"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2"}

func (a *API) versions(w http.ResponseWriter, r *http.Request) error {
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"versions":          supportedVersions,
		"unstable_features": map[string]bool{},
	})
	return nil
}

func (a *API) wellKnownClient(w http.ResponseWriter, r *http.Request) error {
	base := a.cfg.WellKnown.ClientBaseURL
	if base == "" {
		return httputil.NotFound("No client well-known is configured")
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"m.homeserver": map[string]string{"base_url": base},
	})
	return nil
}

func (a *API) wellKnownServer(w http.ResponseWriter, r *http.Request) error {
	server := a.cfg.WellKnown.Server
	if server == "" {
		return httputil.NotFound("No server well-known is configured")
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"m.server": server})
	return nil
}
