package mediaapi

import (
	"context"
	"net/http"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// Quarantine hides media (ours or cached remote) from downloads,
// thumbnails and federation, or shows it again; the content stays on disk.
// It reports false for an unknown media ID.
func (m *MediaAPI) Quarantine(ctx context.Context, server, id string, quarantined bool) (bool, error) {
	return m.store.setQuarantined(ctx, server, id, quarantined)
}

// Delete removes media and its thumbnails, and the files no other media
// shares. It reports false for an unknown media ID.
func (m *MediaAPI) Delete(ctx context.Context, server, id string) (bool, error) {
	found, orphans, err := m.store.deleteMedia(ctx, server, id)
	if err != nil {
		return false, err
	}
	for _, sha := range orphans {
		if err := m.files.remove(sha); err != nil {
			m.logger.WithError(err).WithField("sha256", sha).Warn("remove media file")
		}
	}
	return found, nil
}

func adminRef(r *http.Request, s *accounts.Session) (server, id string, err error) {
	if !s.IsAdmin {
		return "", "", httputil.Forbidden("Only server admins can manage media")
	}
	vars := httputil.Vars(r)
	server, id = vars["serverName"], vars["mediaId"]
	return server, id, checkMediaRef(server, id)
}

// adminQuarantine is POST /_plexus/admin/v1/media/{serverName}/{mediaId}/(un)quarantine.
func (m *MediaAPI) adminQuarantine(q bool) AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
		server, id, err := adminRef(r, s)
		if err != nil {
			return err
		}
		ok, err := m.Quarantine(r.Context(), server, id, q)
		if err != nil {
			return err
		}
		if !ok {
			return httputil.NotFound("Media not found")
		}
		httputil.WriteJSON(w, http.StatusOK, struct{}{})
		return nil
	}
}

// adminDelete is DELETE /_plexus/admin/v1/media/{serverName}/{mediaId}.
func (m *MediaAPI) adminDelete(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	server, id, err := adminRef(r, s)
	if err != nil {
		return err
	}
	ok, err := m.Delete(r.Context(), server, id)
	if err != nil {
		return err
	}
	if !ok {
		return httputil.NotFound("Media not found")
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}
