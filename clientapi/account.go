package clientapi

import (
	"net/http"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// passwordFlows are the UIAA flows for operations on an existing account:
// the user proves it is them by giving the password again.
var passwordFlows = [][]string{{stagePassword}}

func (a *API) registerAccountRoutes(r *router) {
	r.authed(v3, "/account/password", noGuests(a.changePassword), http.MethodPost)
	r.authed(v3, "/account/deactivate", noGuests(a.deactivate), http.MethodPost)
	r.authed(v3, "/account/3pid", noGuests(a.threepids), http.MethodGet)
}

func (a *API) changePassword(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	var req struct {
		Auth          *uiaaAuth `json:"auth"`
		NewPassword   string    `json:"new_password"`
		LogoutDevices *bool     `json:"logout_devices"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	// Check the new password before the authentication dance, so a client
	// does not ask the user for the old one only to fail afterwards.
	if req.NewPassword == "" {
		return httputil.MissingParam("new_password is required")
	}
	if len(req.NewPassword) > maxPasswordLength {
		return httputil.InvalidParam("new_password is longer than %d bytes", maxPasswordLength)
	}
	if _, err := a.requireUIAA(r, req.Auth, s.Localpart, passwordFlows, nil); err != nil {
		return err
	}
	if err := a.accounts.SetPassword(r.Context(), s.Localpart, req.NewPassword); err != nil {
		return err
	}
	if req.LogoutDevices == nil || *req.LogoutDevices {
		// The spec asks to keep the token that made the request.
		if err := a.accounts.DeleteAllDevices(r.Context(), s.Localpart, s.DeviceID); err != nil {
			return err
		}
		// The other devices' encryption keys go too (keys.go).
		if err := a.dropAllDeviceKeys(r.Context(), s.Localpart, s.DeviceID); err != nil {
			return err
		}
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deactivate(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	// id_server and erase are read only so that wrong types are M_BAD_JSON:
	// there are no 3PIDs to unbind, and the profile is always erased.
	var req struct {
		Auth     *uiaaAuth `json:"auth"`
		IDServer string    `json:"id_server"`
		Erase    bool      `json:"erase"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if _, err := a.requireUIAA(r, req.Auth, s.Localpart, passwordFlows, nil); err != nil {
		return err
	}
	if err := a.accounts.Deactivate(r.Context(), s.Localpart); err != nil {
		return err
	}
	// Deactivation removed every device: their encryption keys go too (keys.go).
	if err := a.dropAllDeviceKeys(r.Context(), s.Localpart, ""); err != nil {
		return err
	}
	// No third-party IDs are ever bound, so there is nothing to unbind: the
	// spec asks for "success" in that case.
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "success"})
	return nil
}

// threepids lists the account's third-party IDs: none, as adding them is
// not supported.
func (a *API) threepids(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"threepids": []any{}})
	return nil
}
