package clientapi

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
)

type registerRequest struct {
	Auth                     *uiaaAuth `json:"auth"`
	Username                 string    `json:"username"`
	Password                 string    `json:"password"`
	DeviceID                 string    `json:"device_id"`
	InitialDeviceDisplayName string    `json:"initial_device_display_name"`
	InhibitLogin             bool      `json:"inhibit_login"`
	RefreshToken             bool      `json:"refresh_token"`
}

// registrationFlows are the UIAA flows for registering: open registration
// needs no proof beyond the dummy stage.
var registrationFlows = [][]string{{stageDummy}}

func (a *API) register(w http.ResponseWriter, r *http.Request) error {
	body, err := httputil.ReadBody(r)
	if err != nil {
		return err
	}
	var req registerRequest
	if err := httputil.DecodeJSONObject(body, &req); err != nil {
		return err
	}
	if req.Auth != nil && req.Auth.Session != "" {
		if s := a.uiaa.get(req.Auth.Session); s != nil && s.params != nil {
			if s.result != nil {
				// A repeat of a completed registration gets the same answer.
				w.Header().Set("Content-Type", "application/json")
				_, err := w.Write(s.result)
				return err
			}
			// Later stages may send only "auth": use the first request's fields.
			if req.Username == "" && req.Password == "" {
				auth := req.Auth
				req = registerRequest{}
				_ = json.Unmarshal(s.params, &req)
				req.Auth = auth
			}
		}
	}
	if err := checkDeviceFields(req.DeviceID, req.InitialDeviceDisplayName); err != nil {
		return err
	}
	switch kind := r.URL.Query().Get("kind"); kind {
	case "", "user":
	case "guest":
		return a.registerGuest(w, r, req)
	default:
		return httputil.InvalidParam("kind must be user or guest")
	}
	if !a.cfg.Registration.Open {
		return httputil.Forbidden("Registration is disabled on this server")
	}
	if len(req.Password) > maxPasswordLength {
		return httputil.InvalidParam("Password is longer than %d bytes", maxPasswordLength)
	}
	// Check the name before the authentication dance, so the client can
	// ask for another one straight away.
	localpart := strings.ToLower(req.Username)
	if localpart != "" {
		if err := a.checkNewLocalpart(r, localpart); err != nil {
			return err
		}
	}
	session, err := a.requireUIAA(r, req.Auth, "", registrationFlows, body)
	if err != nil {
		return err
	}
	if localpart == "" {
		localpart = generatedLocalpart()
	}
	if _, err := a.accounts.CreateAccount(r.Context(), localpart, req.Password, false, false); err != nil {
		if errors.Is(err, accounts.ErrUserInUse) {
			return httputil.UserInUse("User ID already taken")
		}
		return err
	}
	resp := map[string]any{"user_id": a.userID(localpart), "home_server": a.cfg.ServerName}
	if !req.InhibitLogin {
		dev, tokens, err := a.accounts.CreateDevice(r.Context(), localpart, accounts.NewDevice{
			DeviceID: req.DeviceID, DisplayName: req.InitialDeviceDisplayName,
			Refreshable: req.RefreshToken, IP: httputil.ClientIP(r),
		})
		if err != nil {
			return err
		}
		resp = a.loginResponse(localpart, dev.DeviceID, tokens)
	}
	result, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	a.uiaa.setResult(session, result)
	httputil.WriteJSON(w, http.StatusOK, json.RawMessage(result))
	return nil
}

func (a *API) registerGuest(w http.ResponseWriter, r *http.Request, req registerRequest) error {
	if !a.cfg.Registration.GuestAccess {
		return httputil.GuestForbidden("Guest access is disabled on this server")
	}
	localpart := generatedLocalpart()
	if _, err := a.accounts.CreateAccount(r.Context(), localpart, "", false, true); err != nil {
		return err
	}
	// Guests cannot choose their device: each registration is a new one.
	return a.writeLogin(w, r, localpart, accounts.NewDevice{
		DisplayName: req.InitialDeviceDisplayName, Refreshable: req.RefreshToken,
	})
}

// checkNewLocalpart answers M_INVALID_USERNAME or M_USER_IN_USE for a name
// that cannot be registered.
func (a *API) checkNewLocalpart(r *http.Request, localpart string) error {
	if !mxid.ValidNewLocalpart(localpart) {
		return httputil.InvalidUsername("User ID may only contain a-z, 0-9 and . _ = - / +")
	}
	if len(a.userID(localpart)) > mxid.MaxUserIDLength {
		return httputil.InvalidUsername("User ID is longer than %d bytes", mxid.MaxUserIDLength)
	}
	free, err := a.accounts.LocalpartAvailable(r.Context(), localpart)
	if err != nil {
		return err
	}
	// The server notices user is made when the first notice is sent.
	if !free || localpart == a.cfg.ServerNotices.SystemUserLocalpart {
		return httputil.UserInUse("User ID already taken")
	}
	return nil
}

func (a *API) registerAvailable(w http.ResponseWriter, r *http.Request) error {
	name := strings.ToLower(r.URL.Query().Get("username"))
	if name == "" {
		return httputil.MissingParam("username is required")
	}
	if err := a.checkNewLocalpart(r, name); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]bool{"available": true})
	return nil
}

// generatedLocalpart names accounts registered without a username.
func generatedLocalpart() string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return "u" + string(b)
}
