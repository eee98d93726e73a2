package clientapi_test

import (
	"strings"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func loginBody(user, password string) map[string]any {
	return map[string]any{
		"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": user}, "password": password,
	}
}

func TestChangePassword(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "old")
		other := s.Login("alice", "old")
		bob := s.Register("bob", "bobpw")
		const path = "/_matrix/client/v3/account/password"

		s.ExpectError(400, "M_MISSING_PARAM", "POST", path, alice.AccessToken, map[string]any{})
		s.ExpectError(400, "M_MISSING_PARAM", "POST", path, alice.AccessToken, map[string]any{"new_password": ""})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, map[string]any{"new_password": strings.Repeat("p", 513)})
		s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, `{"new_password": "x", "logout_devices": "yes"}`)
		s.ExpectError(401, "M_MISSING_TOKEN", "POST", path, "", map[string]any{"new_password": "new"})

		body := map[string]any{"new_password": "new"}
		session := expectChallenge(t, s.Request("POST", path, alice.AccessToken, body), "")
		body["auth"] = passwordAuth("alice", "wrong", session)
		expectChallenge(t, s.Request("POST", path, alice.AccessToken, body), "M_FORBIDDEN")
		s.MustOK("POST", "/_matrix/client/v3/login", "", loginBody("alice", "old"))
		body["auth"] = passwordAuth("alice", "old", session)
		s.MustOK("POST", path, alice.AccessToken, body)

		// The requesting device stays, the others are logged out.
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil)
		s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", other.AccessToken, nil)
		if r := s.MustOK("GET", "/_matrix/client/v3/devices", alice.AccessToken, nil); r.Get("devices.#").Int() != 1 {
			t.Fatalf("devices after the change: %s", r)
		}
		s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", loginBody("alice", "old"))
		s.MustOK("POST", "/_matrix/client/v3/login", "", loginBody("alice", "new"))
		// Other users are untouched.
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", bob.AccessToken, nil)
		s.MustOK("POST", "/_matrix/client/v3/login", "", loginBody("bob", "bobpw"))
	})
}

func TestChangePasswordKeepDevices(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "old")
	other := s.Login("alice", "old")
	const path = "/_matrix/client/r0/account/password"
	body := map[string]any{"new_password": "new", "logout_devices": false}
	session := expectChallenge(t, s.Request("POST", path, alice.AccessToken, body), "")
	body["auth"] = passwordAuth("@alice:localhost", "old", session)
	s.MustOK("POST", path, alice.AccessToken, body)
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", other.AccessToken, nil)
	s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", loginBody("alice", "old"))
	s.MustOK("POST", "/_matrix/client/v3/login", "", loginBody("alice", "new"))
}

func TestAccountSessionsAreBound(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	// A session started to change the password cannot deactivate.
	session := expectChallenge(t, s.Request("POST", "/_matrix/client/v3/account/password", alice.AccessToken,
		map[string]any{"new_password": "x"}), "")
	s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/account/deactivate", alice.AccessToken,
		map[string]any{"auth": passwordAuth("alice", "pw", session)})
	// Nor can bob complete alice's session, with his own password or hers.
	s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/account/password", bob.AccessToken,
		map[string]any{"new_password": "x", "auth": passwordAuth("bob", "pw", session)})
	s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/account/password", bob.AccessToken,
		map[string]any{"new_password": "x", "auth": passwordAuth("alice", "pw", session)})
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil)
	s.MustOK("POST", "/_matrix/client/v3/login", "", loginBody("alice", "pw"))
	s.MustOK("POST", "/_matrix/client/v3/login", "", loginBody("bob", "pw"))
}

func TestDeactivate(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		other := s.Login("alice", "pw")
		bob := s.Register("bob", "pw")
		const path = "/_matrix/client/v3/account/deactivate"

		s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, `{"erase": "yes"}`)
		session := expectChallenge(t, s.Request("POST", path, alice.AccessToken, map[string]any{}), "")
		expectChallenge(t, s.Request("POST", path, alice.AccessToken,
			map[string]any{"auth": passwordAuth("alice", "wrong", session)}), "M_FORBIDDEN")
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil)

		r := s.MustOK("POST", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "pw", session), "erase": true})
		if r.Get("id_server_unbind_result").String() != "success" {
			t.Fatalf("deactivate: %s", r)
		}
		for _, token := range []string{alice.AccessToken, other.AccessToken} {
			s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", token, nil)
		}
		// Only someone who knows the password learns of the deactivation.
		s.ExpectError(403, "M_USER_DEACTIVATED", "POST", "/_matrix/client/v3/login", "", loginBody("alice", "pw"))
		s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", loginBody("alice", "wrong"))
		s.ExpectError(400, "M_USER_IN_USE", "POST", "/_matrix/client/v3/register", "", map[string]any{
			"username": "alice", "password": "x", "auth": map[string]string{"type": "m.login.dummy"},
		})
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", bob.AccessToken, nil)
	})
}

func TestThreepidsAndGuests(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	alice := s.Register("alice", "pw")
	r := s.MustOK("GET", "/_matrix/client/v3/account/3pid", alice.AccessToken, nil)
	if !r.Get("threepids").IsArray() || r.Get("threepids.#").Int() != 0 {
		t.Fatalf("3pid: %s", r)
	}
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/account/3pid", "", nil)

	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	token := g.Get("access_token").String()
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", "/_matrix/client/v3/account/password", token, map[string]any{"new_password": "x"})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", "/_matrix/client/v3/account/deactivate", token, map[string]any{})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "GET", "/_matrix/client/v3/account/3pid", token, nil)
}

func TestRefreshTokens(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		s.Register("alice", "pw")
		// Without refresh_token the access token does not expire.
		plain := s.MustOK("POST", "/_matrix/client/v3/login", "", loginBody("alice", "pw"))
		if plain.Get("refresh_token").Exists() || plain.Get("expires_in_ms").Exists() {
			t.Fatalf("login without refresh_token: %s", plain)
		}

		body := loginBody("alice", "pw")
		body["refresh_token"] = true
		login := s.MustOK("POST", "/_matrix/client/v3/login", "", body)
		access, refresh := login.Get("access_token").String(), login.Get("refresh_token").String()
		if refresh == "" || login.Get("expires_in_ms").Int() != (5*time.Minute).Milliseconds() {
			t.Fatalf("refreshable login: %s", login)
		}
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", access, nil)

		for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/v1"} {
			r := s.MustOK("POST", prefix+"/refresh", "", map[string]any{"refresh_token": refresh})
			newAccess, newRefresh := r.Get("access_token").String(), r.Get("refresh_token").String()
			if newAccess == "" || newRefresh == "" || newAccess == access || newRefresh == refresh || r.Get("expires_in_ms").Int() <= 0 {
				t.Fatalf("refresh: %s", r)
			}
			who := s.MustOK("GET", "/_matrix/client/v3/account/whoami", newAccess, nil)
			if who.Get("device_id").String() != login.Get("device_id").String() {
				t.Fatalf("refreshed token on another device: %s", who)
			}
			// The old tokens are revoked.
			r = s.ExpectError(401, "M_UNKNOWN_TOKEN", "POST", prefix+"/refresh", "", map[string]any{"refresh_token": refresh})
			if r.Get("soft_logout").Bool() {
				t.Fatalf("a revoked refresh token is no soft logout: %s", r)
			}
			s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", access, nil)
			access, refresh = newAccess, newRefresh
		}

		s.ExpectError(401, "M_UNKNOWN_TOKEN", "POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": "nonsense"})
		s.ExpectError(400, "M_MISSING_PARAM", "POST", "/_matrix/client/v3/refresh", "", map[string]any{})
		s.ExpectError(400, "M_NOT_JSON", "POST", "/_matrix/client/v3/refresh", "", "refresh")

		// Logging the device out kills its refresh token too.
		s.MustOK("POST", "/_matrix/client/v3/logout", access, map[string]any{})
		s.ExpectError(401, "M_UNKNOWN_TOKEN", "POST", "/_matrix/client/v1/refresh", "", map[string]any{"refresh_token": refresh})
	})
}

func TestExpiredAccessToken(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Auth.AccessTokenLifetime = config.Duration(time.Second) })
	s.Register("alice", "pw")
	body := loginBody("alice", "pw")
	body["refresh_token"] = true
	login := s.MustOK("POST", "/_matrix/client/v3/login", "", body)
	if login.Get("expires_in_ms").Int() != 1000 {
		t.Fatalf("login: %s", login)
	}
	access := login.Get("access_token").String()
	time.Sleep(1100 * time.Millisecond)

	r := s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", access, nil)
	if !r.Get("soft_logout").Bool() {
		t.Fatalf("an expired token is a soft logout: %s", r)
	}
	// The refresh token outlives the access token.
	r = s.MustOK("POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": login.Get("refresh_token").String()})
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", r.Get("access_token").String(), nil)
}

// Password guesses through UIAA get the strict login rate limit.
func TestUIAAPasswordRateLimited(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) {
		c.RateLimit.Enabled = true
		c.RateLimit.AuthPerMinute = 1
		c.RateLimit.AuthBurst = 3
	})
	alice := s.Register("alice", "pw")
	const path = "/_matrix/client/v3/account/deactivate"
	session := expectChallenge(t, s.Request("POST", path, alice.AccessToken, map[string]any{}), "")
	for range 3 {
		expectChallenge(t, s.Request("POST", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "guess", session)}), "M_FORBIDDEN")
	}
	r := s.ExpectError(429, "M_LIMIT_EXCEEDED", "POST", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "pw", session)})
	if r.Get("retry_after_ms").Int() <= 0 {
		t.Fatalf("rate limited: %s", r)
	}
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil)
}
