package clientapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// Shared-secret registration at /_synapse/admin/v1/register: the admin
// path that scripts and test harnesses use to create (admin) accounts
// whether or not open registration is on. A client fetches a nonce and
// proves it knows registration.shared_secret with an HMAC over the request.

const (
	nonceLifetime = 60 * time.Second
	// maxNonces bounds memory; past it the oldest nonce is dropped.
	maxNonces = 10000
)

// nonceStore holds single-use nonces in memory, oldest first.
type nonceStore struct {
	mu      sync.Mutex
	created map[string]time.Time
	// order lists nonces as they were issued; taken ones stay until they
	// reach the front, so len(order) bounds the store.
	order []string
	now   func() time.Time
}

func newNonceStore() *nonceStore {
	return &nonceStore{created: map[string]time.Time{}, now: time.Now}
}

// issue makes a new nonce.
func (n *nonceStore) issue() string {
	nonce := randomString(24)
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.now()
	// All nonces live equally long, so expired ones are at the front.
	for len(n.order) > 0 {
		oldest := n.order[0]
		created, live := n.created[oldest]
		if live && now.Sub(created) <= nonceLifetime && len(n.order) < maxNonces {
			break
		}
		delete(n.created, oldest)
		n.order = n.order[1:]
	}
	n.created[nonce] = now
	n.order = append(n.order, nonce)
	return nonce
}

// take uses up a nonce; false when it is unknown, used or expired.
func (n *nonceStore) take(nonce string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	created, ok := n.created[nonce]
	if !ok {
		return false
	}
	delete(n.created, nonce)
	return n.now().Sub(created) <= nonceLifetime
}

func (a *API) registerAdminRoutes(root *mux.Router) {
	const path = "/_synapse/admin/v1/register"
	root.Handle(path, httputil.Handler(a.adminRegisterNonce)).Methods(http.MethodGet)
	root.Handle(path, httputil.Handler(a.adminRegister)).Methods(http.MethodPost)
}

// sharedSecretEnabled answers as for an unknown endpoint when no secret is
// configured, so the server does not advertise the feature.
func (a *API) sharedSecretEnabled() error {
	if a.cfg.Registration.SharedSecret == "" {
		return httputil.Unrecognized("Shared-secret registration is disabled")
	}
	return nil
}

func (a *API) adminRegisterNonce(w http.ResponseWriter, r *http.Request) error {
	if err := a.sharedSecretEnabled(); err != nil {
		return err
	}
	// Nonces cost memory: limit how fast one client can ask for them.
	if err := a.limit.Check(httputil.ClientIP(r)); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"nonce": a.nonces.issue()})
	return nil
}

type adminRegisterRequest struct {
	Nonce       string `json:"nonce"`
	Username    string `json:"username"`
	Password    string `json:"password"`
	Admin       bool   `json:"admin"`
	DisplayName string `json:"displayname"`
	MAC         string `json:"mac"`
}

// sharedSecretMAC is hex(HMAC-SHA1(secret, nonce \0 username \0 password \0 admin|notadmin)).
func sharedSecretMAC(secret string, req *adminRegisterRequest) []byte {
	m := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if req.Admin {
		role = "admin"
	}
	m.Write([]byte(req.Nonce + "\x00" + req.Username + "\x00" + req.Password + "\x00" + role))
	return m.Sum(nil)
}

func (a *API) adminRegister(w http.ResponseWriter, r *http.Request) error {
	if err := a.sharedSecretEnabled(); err != nil {
		return err
	}
	if err := a.authLimit.Check(httputil.ClientIP(r)); err != nil {
		return err
	}
	var req adminRegisterRequest
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	switch {
	case req.Nonce == "":
		return httputil.MissingParam("nonce is required")
	case req.Username == "":
		return httputil.MissingParam("username is required")
	case req.Password == "":
		return httputil.MissingParam("password is required")
	case len(req.Password) > maxPasswordLength:
		return httputil.InvalidParam("Password is longer than %d bytes", maxPasswordLength)
	case len(req.DisplayName) > maxDisplayNameLength:
		return httputil.InvalidParam("displayname is longer than %d bytes", maxDisplayNameLength)
	}
	// The nonce is used up by any attempt, so each MAC guess needs a new one.
	if !a.nonces.take(req.Nonce) {
		return httputil.BadRequest("Unknown or expired nonce")
	}
	got, err := hex.DecodeString(req.MAC)
	if err != nil || !hmac.Equal(got, sharedSecretMAC(a.cfg.Registration.SharedSecret, &req)) {
		return httputil.Forbidden("HMAC incorrect")
	}
	// The MAC covers the username as sent; the account gets it lower-cased.
	localpart := strings.ToLower(req.Username)
	if err := a.checkNewLocalpart(r, localpart); err != nil {
		return err
	}
	if _, err := a.accounts.CreateAccount(r.Context(), localpart, req.Password, req.Admin, false); err != nil {
		if errors.Is(err, accounts.ErrUserInUse) {
			return httputil.UserInUse("User ID already taken")
		}
		return err
	}
	if req.DisplayName != "" {
		if err := a.accounts.SetDisplayName(r.Context(), localpart, req.DisplayName); err != nil {
			return err
		}
	}
	return a.writeLogin(w, r, localpart, accounts.NewDevice{})
}
