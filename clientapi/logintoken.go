package clientapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// m.login.token: a logged-in device asks for a short-lived, single-use
// token (POST /_matrix/client/v1/login/get_token, behind user-interactive
// authentication every time), and a new device logs in with it
// (POST /login with type m.login.token).

const (
	loginTokenType     = "m.login.token"
	loginTokenLifetime = 2 * time.Minute // the spec's recommendation
	maxLoginTokenLen   = 256
)

func (a *API) registerLoginTokenRoutes(r *router) {
	r.authed(v1, "/login/get_token", a.getLoginToken, http.MethodPost)
}

// loginFlowList is what GET /login offers.
func loginFlowList() []map[string]any {
	return []map[string]any{
		{"type": "m.login.password"},
		{"type": loginTokenType, "get_login_token": true},
	}
}

func (a *API) getLoginToken(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		// Guests have no password, so no flow could be completed.
		return httputil.GuestForbidden("Guests cannot make login tokens")
	}
	var req struct {
		Auth *uiaaAuth `json:"auth"`
	}
	if err := readOptionalJSON(r, &req); err != nil {
		return err
	}
	// A stricter limit than other endpoints: each token is a new login.
	if err := a.authLimit.Check("get_token:" + s.Localpart); err != nil {
		return err
	}
	if _, err := a.requireUIAA(r, req.Auth, s.Localpart, passwordFlows, nil); err != nil {
		return err
	}
	token, err := a.accounts.CreateLoginToken(r.Context(), s.Localpart, loginTokenLifetime)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"login_token": token, "expires_in_ms": loginTokenLifetime.Milliseconds(),
	})
	return nil
}

// loginWithToken finishes a login of type m.login.token.
func (a *API) loginWithToken(w http.ResponseWriter, r *http.Request, req *loginRequest) error {
	if err := checkDeviceFields(req.DeviceID, req.InitialDeviceDisplayName); err != nil {
		return err
	}
	if req.Token == "" {
		return httputil.MissingParam("token is required")
	}
	if len(req.Token) > maxLoginTokenLen {
		return httputil.Forbidden("Invalid login token")
	}
	localpart, err := a.accounts.ConsumeLoginToken(r.Context(), req.Token)
	switch {
	case errors.Is(err, accounts.ErrUnknownToken):
		return httputil.Forbidden("Invalid or expired login token")
	case errors.Is(err, accounts.ErrDeactivated):
		return httputil.UserDeactivated("This account has been deactivated")
	case err != nil:
		return err
	}
	return a.writeLogin(w, r, localpart, accounts.NewDevice{
		DeviceID: req.DeviceID, DisplayName: req.InitialDeviceDisplayName, Refreshable: req.RefreshToken,
	})
}
