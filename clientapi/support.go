package clientapi

import (
	"net/http"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// The administrative contact (/.well-known/matrix/support): who to reach
// about the server, from well_known.support in the config.

func (a *API) registerSupportRoutes(r *router) {
	r.mux.Handle("/.well-known/matrix/support", httputil.Handler(a.wellKnownSupport)).Methods(http.MethodGet)
}

func (a *API) wellKnownSupport(w http.ResponseWriter, r *http.Request) error {
	support := a.cfg.WellKnown.Support
	if len(support.Contacts) == 0 && support.SupportPage == "" {
		return httputil.NotFound("No support information is configured")
	}
	contacts := make([]map[string]string, 0, len(support.Contacts))
	for _, c := range support.Contacts {
		contact := map[string]string{"role": c.Role}
		if c.MatrixID != "" {
			contact["matrix_id"] = c.MatrixID
		}
		if c.EmailAddress != "" {
			contact["email_address"] = c.EmailAddress
		}
		contacts = append(contacts, contact)
	}
	body := map[string]any{}
	if len(contacts) > 0 {
		body["contacts"] = contacts
	}
	if support.SupportPage != "" {
		body["support_page"] = support.SupportPage
	}
	httputil.WriteJSON(w, http.StatusOK, body)
	return nil
}
