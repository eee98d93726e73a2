package clientapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

const (
	adminRegisterPath = "/_synapse/admin/v1/register"
	sharedSecret      = "reg_secret"
)

func withSharedSecret(c *config.Config) { c.Registration.SharedSecret = sharedSecret }

// sharedSecretBody builds a shared-secret registration request with a
// fresh nonce and the MAC a client holding secret would send.
func sharedSecretBody(s *testserver.Server, secret, username, password string, admin bool) map[string]any {
	nonce := s.MustOK("GET", adminRegisterPath, "", nil).Get("nonce").String()
	return signedBody(secret, nonce, username, password, admin)
}

// signedBody is a request for the given nonce, signed with secret.
func signedBody(secret, nonce, username, password string, admin bool) map[string]any {
	role := "notadmin"
	if admin {
		role = "admin"
	}
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(nonce + "\x00" + username + "\x00" + password + "\x00" + role))
	return map[string]any{
		"nonce": nonce, "username": username, "password": password, "admin": admin,
		"mac": hex.EncodeToString(m.Sum(nil)),
	}
}

func TestSharedSecretRegistration(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		ctx := context.Background()
		// The admin path works with open registration off.
		body := sharedSecretBody(s, sharedSecret, "RootA", "pw1", true)
		body["displayname"] = "The Admin"
		r := s.MustOK("POST", adminRegisterPath, "", body)
		if r.Get("user_id").String() != "@roota:localhost" || r.Get("access_token").String() == "" ||
			r.Get("device_id").String() == "" || r.Get("home_server").String() != "localhost" {
			t.Fatalf("register admin: %s", r)
		}
		who := s.MustOK("GET", "/_matrix/client/v3/account/whoami", r.Get("access_token").String(), nil)
		if who.Get("user_id").String() != "@roota:localhost" {
			t.Fatalf("whoami: %s", who)
		}
		acct, err := s.Server.Accounts.Account(ctx, "roota")
		if err != nil || !acct.IsAdmin || acct.IsGuest {
			t.Fatalf("admin account: %+v, %v", acct, err)
		}
		if p, err := s.Server.Accounts.Profile(ctx, "roota"); err != nil || p.DisplayName != "The Admin" {
			t.Fatalf("displayname: %+v, %v", p, err)
		}
		s.Login("roota", "pw1")

		r = s.MustOK("POST", adminRegisterPath, "", sharedSecretBody(s, sharedSecret, "plain", "pw2", false))
		if r.Get("user_id").String() != "@plain:localhost" {
			t.Fatalf("register user: %s", r)
		}
		if acct, err := s.Server.Accounts.Account(ctx, "plain"); err != nil || acct.IsAdmin {
			t.Fatalf("plain account: %+v, %v", acct, err)
		}
	}, withSharedSecret, func(c *config.Config) { c.Registration.Open = false })
}

func TestSharedSecretRegistrationErrors(t *testing.T) {
	s := testserver.New(t, withSharedSecret)
	ctx := context.Background()

	// Nonces are random and new each time.
	n1 := s.MustOK("GET", adminRegisterPath, "", nil).Get("nonce").String()
	n2 := s.MustOK("GET", adminRegisterPath, "", nil).Get("nonce").String()
	if n1 == "" || n1 == n2 {
		t.Fatalf("nonces %q, %q", n1, n2)
	}

	// A MAC made with another secret, none at all, or one that does not
	// cover the admin flag the request asks for.
	s.ExpectError(403, "M_FORBIDDEN", "POST", adminRegisterPath, "", sharedSecretBody(s, "wrong", "eve", "pw", false))
	body := sharedSecretBody(s, sharedSecret, "eve", "pw", false)
	delete(body, "mac")
	s.ExpectError(403, "M_FORBIDDEN", "POST", adminRegisterPath, "", body)
	body = sharedSecretBody(s, sharedSecret, "eve", "pw", false)
	body["admin"] = true
	s.ExpectError(403, "M_FORBIDDEN", "POST", adminRegisterPath, "", body)
	body = sharedSecretBody(s, sharedSecret, "eve", "pw", false)
	body["mac"] = "not hex"
	s.ExpectError(403, "M_FORBIDDEN", "POST", adminRegisterPath, "", body)
	if _, err := s.Server.Accounts.Account(ctx, "eve"); err == nil {
		t.Fatal("a refused registration made an account")
	}

	// A nonce works once, and only nonces the server issued work.
	body = sharedSecretBody(s, sharedSecret, "eve", "pw", false)
	s.MustOK("POST", adminRegisterPath, "", body)
	s.ExpectError(400, "M_UNKNOWN", "POST", adminRegisterPath, "", signedBody(sharedSecret, body["nonce"].(string), "eve2", "pw", false))
	s.ExpectError(400, "M_UNKNOWN", "POST", adminRegisterPath, "", signedBody(sharedSecret, "made-up", "eve2", "pw", false))
	// A failed attempt uses the nonce up too.
	body = sharedSecretBody(s, "wrong", "eve3", "pw", false)
	s.ExpectError(403, "M_FORBIDDEN", "POST", adminRegisterPath, "", body)
	s.ExpectError(400, "M_UNKNOWN", "POST", adminRegisterPath, "", signedBody(sharedSecret, body["nonce"].(string), "eve3", "pw", false))

	// Names: lower-cased, then checked like any new user ID.
	s.ExpectError(400, "M_USER_IN_USE", "POST", adminRegisterPath, "", sharedSecretBody(s, sharedSecret, "EVE", "pw", false))
	for _, bad := range []string{"us,er", "a b", "ünï", "x:y"} {
		s.ExpectError(400, "M_INVALID_USERNAME", "POST", adminRegisterPath, "", sharedSecretBody(s, sharedSecret, bad, "pw", false))
	}

	// Missing or mistyped fields.
	for _, field := range []string{"nonce", "username", "password"} {
		body := sharedSecretBody(s, sharedSecret, "frank", "pw", false)
		delete(body, field)
		s.ExpectError(400, "M_MISSING_PARAM", "POST", adminRegisterPath, "", body)
	}
	body = sharedSecretBody(s, sharedSecret, "frank", "pw", false)
	body["admin"] = "yes"
	s.ExpectError(400, "M_BAD_JSON", "POST", adminRegisterPath, "", body)
	s.ExpectError(400, "M_NOT_JSON", "POST", adminRegisterPath, "", "[]")
	body = sharedSecretBody(s, sharedSecret, "frank", "pw", false)
	body["displayname"] = string(make([]byte, 1000))
	s.ExpectError(400, "M_INVALID_PARAM", "POST", adminRegisterPath, "", body)
	if _, err := s.Server.Accounts.Account(ctx, "frank"); err == nil {
		t.Fatal("a refused registration made an account")
	}
}

func TestSharedSecretRegistrationDisabled(t *testing.T) {
	s := testserver.New(t)
	s.ExpectError(404, "M_UNRECOGNIZED", "GET", adminRegisterPath, "", nil)
	// Even a MAC made with an empty key gets nowhere.
	s.ExpectError(404, "M_UNRECOGNIZED", "POST", adminRegisterPath, "", signedBody("", "n", "eve", "pw", false))
}

func TestSharedSecretRegistrationRateLimited(t *testing.T) {
	s := testserver.New(t, withSharedSecret, func(c *config.Config) {
		c.RateLimit = config.RateLimit{Enabled: true, RequestsPerSecond: 100, Burst: 100, AuthPerMinute: 1, AuthBurst: 2}
	})
	s.MustOK("POST", adminRegisterPath, "", sharedSecretBody(s, sharedSecret, "one", "pw", false))
	s.ExpectError(403, "M_FORBIDDEN", "POST", adminRegisterPath, "", sharedSecretBody(s, "wrong", "two", "pw", false))
	r := s.ExpectError(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "POST", adminRegisterPath, "", sharedSecretBody(s, sharedSecret, "three", "pw", false))
	if r.Get("retry_after_ms").Int() <= 0 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("429 without retry hints: %s %v", r, r.Header)
	}
}
