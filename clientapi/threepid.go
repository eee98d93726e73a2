package clientapi

import (
	"encoding/json"
	"net/http"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// Third-party identifiers (email addresses, phone numbers): this server
// sends no email or SMS and talks to no identity server, so accounts have
// none (GET /account/3pid lists none, /capabilities says m.3pid_changes is
// off). Every other 3PID endpoint checks its body and then answers with
// the spec's error for what it cannot do, never 404.

var (
	errMediumNotSupported = func(medium string) error {
		return &httputil.Error{Status: http.StatusBadRequest, Code: "M_THREEPID_MEDIUM_NOT_SUPPORTED",
			Message: "This server does not validate " + medium + " addresses: it sends no email or SMS"}
	}
	errThreepidNotFound = &httputil.Error{Status: http.StatusBadRequest, Code: "M_THREEPID_NOT_FOUND",
		Message: "No account has this third-party identifier"}
	errThreepidAuthFailed = &httputil.Error{Status: http.StatusForbidden, Code: "M_THREEPID_AUTH_FAILED",
		Message: "Unknown validation session: this server validates no third-party identifiers"}
	errThreepidDenied = &httputil.Error{Status: http.StatusForbidden, Code: "M_THREEPID_DENIED",
		Message: "This server does not bind third-party identifiers to identity servers"}
)

func (a *API) registerThreepidRoutes(r *router) {
	r.authed(v3, "/account/3pid", noGuests(a.addThreepidDeprecated), http.MethodPost)
	r.authed(v3, "/account/3pid/add", noGuests(a.addThreepid), http.MethodPost)
	r.authed(v3, "/account/3pid/bind", noGuests(a.bindThreepid), http.MethodPost)
	r.authed(v3, "/account/3pid/unbind", noGuests(a.removeThreepid), http.MethodPost)
	r.authed(v3, "/account/3pid/delete", noGuests(a.removeThreepid), http.MethodPost)
	for _, prefix := range []string{"/account/3pid", "/register", "/account/password"} {
		r.public(v3, prefix+"/email/requestToken", a.requestThreepidToken("email", prefix), true, http.MethodPost)
		r.public(v3, prefix+"/msisdn/requestToken", a.requestThreepidToken("msisdn", prefix), true, http.MethodPost)
	}
}

// threepidRequest is the union of the request bodies' fields.
type threepidRequest struct {
	ClientSecret  string `json:"client_secret"`
	SID           string `json:"sid"`
	Email         string `json:"email"`
	Country       string `json:"country"`
	PhoneNumber   string `json:"phone_number"`
	SendAttempt   *int   `json:"send_attempt"`
	Medium        string `json:"medium"`
	Address       string `json:"address"`
	IDServer      string `json:"id_server"`
	ThreePIDCreds *struct {
		ClientSecret string `json:"client_secret"`
		SID          string `json:"sid"`
	} `json:"three_pid_creds"`
	Auth json.RawMessage `json:"auth"`
}

func readThreepidRequest(r *http.Request) (*threepidRequest, error) {
	var req threepidRequest
	if err := httputil.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	return &req, nil
}

// requestThreepidToken serves the six requestToken endpoints. Resetting a
// password by email names an address no account has (there are none);
// the others would need email or SMS sent.
func (a *API) requestThreepidToken(medium, prefix string) httputil.Handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := readThreepidRequest(r)
		if err != nil {
			return err
		}
		if req.ClientSecret == "" || req.SendAttempt == nil {
			return httputil.MissingParam("client_secret and send_attempt are required")
		}
		if medium == "email" && req.Email == "" {
			return httputil.MissingParam("email is required")
		}
		if medium == "msisdn" && (req.Country == "" || req.PhoneNumber == "") {
			return httputil.MissingParam("country and phone_number are required")
		}
		if prefix == "/account/password" {
			return errThreepidNotFound
		}
		return errMediumNotSupported(medium)
	}
}

func (a *API) addThreepidDeprecated(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	req, err := readThreepidRequest(r)
	if err != nil {
		return err
	}
	if req.ThreePIDCreds == nil || req.ThreePIDCreds.ClientSecret == "" || req.ThreePIDCreds.SID == "" {
		return httputil.MissingParam("three_pid_creds with client_secret and sid is required")
	}
	return errThreepidAuthFailed
}

func (a *API) addThreepid(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	req, err := readThreepidRequest(r)
	if err != nil {
		return err
	}
	if req.ClientSecret == "" || req.SID == "" {
		return httputil.MissingParam("client_secret and sid are required")
	}
	// No session can exist, so there is nothing to authenticate for.
	return errThreepidAuthFailed
}

func (a *API) bindThreepid(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	req, err := readThreepidRequest(r)
	if err != nil {
		return err
	}
	if req.ClientSecret == "" || req.SID == "" || req.IDServer == "" {
		return httputil.MissingParam("client_secret, sid, id_server and id_access_token are required")
	}
	return errThreepidDenied
}

// removeThreepid serves /unbind and /delete: the account has no
// third-party identifiers, so the one named is not found.
func (a *API) removeThreepid(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	req, err := readThreepidRequest(r)
	if err != nil {
		return err
	}
	if req.Medium == "" || req.Address == "" {
		return httputil.MissingParam("medium and address are required")
	}
	if req.Medium != "email" && req.Medium != "msisdn" {
		return httputil.InvalidParam("medium must be email or msisdn")
	}
	return errThreepidNotFound
}
