package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
)

// Limits on what clients send with a login or registration.
const (
	maxPasswordLength    = 512
	maxDeviceIDLength    = 255
	maxDisplayNameLength = 256
)

func (a *API) registerAuthRoutes(r *router) {
	r.public(v3, "/login", a.loginFlows, false, http.MethodGet)
	r.public(v3, "/login", a.login, true, http.MethodPost)
	r.public(v3, "/register", a.register, true, http.MethodPost)
	r.public(v3, "/register/available", a.registerAvailable, false, http.MethodGet)
	r.public(v3+"|"+v1, "/refresh", a.refresh, true, http.MethodPost)
	r.authed(v3, "/logout", a.logout, http.MethodPost)
	r.authed(v3, "/logout/all", a.logoutAll, http.MethodPost)
	r.authed(v3, "/account/whoami", a.whoami, http.MethodGet)
}

func (a *API) loginFlows(w http.ResponseWriter, r *http.Request) error {
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"flows": loginFlowList()}) // logintoken.go
	return nil
}

type userIdentifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

// identifiedUser returns the local localpart an m.id.user identifier (or
// the deprecated top-level "user") names, lower-cased: localparts are
// matched case-insensitively at login.
func (a *API) identifiedUser(identifier json.RawMessage, user string) (string, error) {
	if len(identifier) > 0 && string(identifier) != "null" {
		var id userIdentifier
		if err := json.Unmarshal(identifier, &id); err != nil {
			return "", httputil.BadJSON("identifier must be an object")
		}
		if id.Type != "m.id.user" {
			return "", httputil.BadRequest("Unsupported identifier type %q", id.Type)
		}
		user = id.User
	}
	if user == "" {
		return "", httputil.MissingParam("No user identifier given")
	}
	if strings.HasPrefix(user, "@") {
		uid, err := mxid.ParseUserID(user)
		if err != nil {
			return "", httputil.InvalidUsername("Invalid user ID: %v", err)
		}
		if uid.Server != a.cfg.ServerName {
			return "", httputil.Forbidden("User %s is not on this server", user)
		}
		user = uid.Localpart
	}
	return strings.ToLower(user), nil
}

type loginRequest struct {
	Type                     string          `json:"type"`
	Identifier               json.RawMessage `json:"identifier"`
	User                     string          `json:"user"`
	Password                 string          `json:"password"`
	DeviceID                 string          `json:"device_id"`
	InitialDeviceDisplayName string          `json:"initial_device_display_name"`
	RefreshToken             bool            `json:"refresh_token"`
	Token                    string          `json:"token"` // m.login.token (logintoken.go)
}

func (a *API) login(w http.ResponseWriter, r *http.Request) error {
	var req loginRequest
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.Type == loginTokenType {
		return a.loginWithToken(w, r, &req)
	}
	if req.Type != "m.login.password" {
		return httputil.BadRequest("Unknown login type %q", req.Type)
	}
	if err := checkDeviceFields(req.DeviceID, req.InitialDeviceDisplayName); err != nil {
		return err
	}
	if len(req.Password) > maxPasswordLength {
		return httputil.Forbidden("Invalid username or password")
	}
	localpart, err := a.identifiedUser(req.Identifier, req.User)
	if err != nil {
		return err
	}
	_, err = a.accounts.CheckPassword(r.Context(), localpart, req.Password)
	switch {
	case errors.Is(err, accounts.ErrDeactivated):
		return httputil.UserDeactivated("This account has been deactivated")
	case errors.Is(err, accounts.ErrNotFound), errors.Is(err, accounts.ErrWrongPassword):
		return httputil.Forbidden("Invalid username or password")
	case err != nil:
		return err
	}
	return a.writeLogin(w, r, localpart, accounts.NewDevice{
		DeviceID: req.DeviceID, DisplayName: req.InitialDeviceDisplayName, Refreshable: req.RefreshToken,
	})
}

// checkDeviceFields bounds the device fields clients choose.
func checkDeviceFields(deviceID, displayName string) error {
	if len(deviceID) > maxDeviceIDLength {
		return httputil.InvalidParam("device_id is longer than %d bytes", maxDeviceIDLength)
	}
	if len(displayName) > maxDisplayNameLength {
		return httputil.InvalidParam("initial_device_display_name is longer than %d bytes", maxDisplayNameLength)
	}
	return nil
}

// writeLogin logs a device in and writes the login response.
func (a *API) writeLogin(w http.ResponseWriter, r *http.Request, localpart string, d accounts.NewDevice) error {
	d.IP = httputil.ClientIP(r)
	dev, tokens, err := a.accounts.CreateDevice(r.Context(), localpart, d)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, a.loginResponse(localpart, dev.DeviceID, tokens))
	return nil
}

func (a *API) loginResponse(localpart, deviceID string, tokens accounts.Tokens) map[string]any {
	resp := map[string]any{
		"user_id":      a.userID(localpart),
		"access_token": tokens.AccessToken,
		"device_id":    deviceID,
		"home_server":  a.cfg.ServerName,
	}
	if tokens.RefreshToken != "" {
		resp["refresh_token"] = tokens.RefreshToken
		resp["expires_in_ms"] = tokens.ExpiresIn.Milliseconds()
	}
	if base := a.cfg.WellKnown.ClientBaseURL; base != "" {
		resp["well_known"] = map[string]any{"m.homeserver": map[string]string{"base_url": base}}
	}
	return resp
}

func (a *API) refresh(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.RefreshToken == "" {
		return httputil.MissingParam("refresh_token is required")
	}
	tokens, err := a.accounts.Refresh(r.Context(), req.RefreshToken)
	if errors.Is(err, accounts.ErrUnknownToken) {
		return httputil.UnknownToken("Unknown refresh token", false)
	}
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"access_token":  tokens.AccessToken,
		"refresh_token": tokens.RefreshToken,
		"expires_in_ms": tokens.ExpiresIn.Milliseconds(),
	})
	return nil
}

func (a *API) logout(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if err := a.accounts.DeleteDevices(r.Context(), s.Localpart, []string{s.DeviceID}); err != nil {
		return err
	}
	// The device's encryption keys go too (keys.go).
	if err := a.dropDeviceKeys(r.Context(), s.Localpart, []string{s.DeviceID}); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) logoutAll(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if err := a.accounts.DeleteAllDevices(r.Context(), s.Localpart, ""); err != nil {
		return err
	}
	// Every device's encryption keys go too (keys.go).
	if err := a.dropAllDeviceKeys(r.Context(), s.Localpart, ""); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	resp := map[string]any{"user_id": a.userID(s.Localpart), "device_id": s.DeviceID}
	if s.IsGuest {
		resp["is_guest"] = true
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}
