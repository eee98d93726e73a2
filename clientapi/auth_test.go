package clientapi_test

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestRegisterLoginWhoamiLogout(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		// The first call without auth gets the flows.
		r := s.Request("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "alice", "password": "sesame"})
		if r.Status != http.StatusUnauthorized || r.Get("flows.0.stages.0").String() != "m.login.dummy" || r.Get("session").String() == "" {
			t.Fatalf("register without auth: %s", r)
		}
		if r.Get("errcode").Exists() {
			t.Fatalf("a plain UIAA challenge carries no errcode: %s", r)
		}
		r = s.MustOK("POST", "/_matrix/client/v3/register", "", map[string]any{
			"username": "alice", "password": "sesame",
			"auth": map[string]string{"type": "m.login.dummy", "session": r.Get("session").String()},
		})
		if r.Get("user_id").String() != "@alice:localhost" || r.Get("access_token").String() == "" || r.Get("device_id").String() == "" {
			t.Fatalf("register: %s", r)
		}
		token := r.Get("access_token").String()
		who := s.MustOK("GET", "/_matrix/client/v3/account/whoami", token, nil)
		if who.Get("user_id").String() != "@alice:localhost" || who.Get("device_id").String() != r.Get("device_id").String() {
			t.Fatalf("whoami: %s", who)
		}

		// Localparts are matched case-insensitively, full IDs work too.
		login := s.MustOK("POST", "/_matrix/client/r0/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "ALICE"}, "password": "sesame",
		})
		if login.Get("user_id").String() != "@alice:localhost" {
			t.Fatalf("login: %s", login)
		}
		s.MustOK("POST", "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "@alice:localhost"}, "password": "sesame",
		})
		s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "alice"}, "password": "wrong",
		})
		s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "nobody"}, "password": "sesame",
		})

		s.MustOK("POST", "/_matrix/client/v3/logout", token, map[string]any{})
		r = s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", token, nil)
		if r.Get("soft_logout").Bool() {
			t.Fatalf("a logged-out token is not a soft logout: %s", r)
		}
		// The other login still works.
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", login.Get("access_token").String(), nil)
	})
}

func TestRegistrationErrors(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = false })
	s.Register("bob", "pw")
	dummy := map[string]string{"type": "m.login.dummy"}
	s.ExpectError(400, "M_USER_IN_USE", "POST", "/_matrix/client/v3/register", "", map[string]any{"username": "BOB", "password": "x", "auth": dummy})
	for _, bad := range []string{"bo b", "b!ob", "us,er", "ünï"} {
		s.ExpectError(400, "M_INVALID_USERNAME", "POST", "/_matrix/client/v3/register", "", map[string]any{"username": bad, "password": "x", "auth": dummy})
	}
	s.ExpectError(400, "M_USER_IN_USE", "GET", "/_matrix/client/v3/register/available?username=bob", "", nil)
	s.ExpectError(400, "M_INVALID_USERNAME", "GET", "/_matrix/client/v3/register/available?username=b:b", "", nil)
	if r := s.MustOK("GET", "/_matrix/client/v3/register/available?username=carol", "", nil); !r.Get("available").Bool() {
		t.Fatalf("available: %s", r)
	}
	// Capitals are folded, as users expect of names.
	r := s.MustOK("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "Carol", "password": "x", "auth": dummy, "inhibit_login": true})
	if r.Get("user_id").String() != "@carol:localhost" || r.Get("access_token").Exists() {
		t.Fatalf("inhibit_login: %s", r)
	}
	s.ExpectError(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/register?kind=admin", "", map[string]any{})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	s.ExpectError(400, "M_NOT_JSON", "POST", "/_matrix/client/v3/register", "", "{not json")
	s.ExpectError(400, "M_BAD_JSON", "POST", "/_matrix/client/v3/register", "", `{"username": 7}`)
}

func TestRegistrationClosedAndGuests(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) {
		c.Registration.Open = false
		c.Registration.GuestAccess = true
	})
	s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "eve", "password": "x", "auth": map[string]string{"type": "m.login.dummy"},
	})
	r := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	who := s.MustOK("GET", "/_matrix/client/v3/account/whoami", r.Get("access_token").String(), nil)
	if !who.Get("is_guest").Bool() || who.Get("user_id").String() != r.Get("user_id").String() {
		t.Fatalf("guest whoami: %s", who)
	}
}

func TestTokenErrors(t *testing.T) {
	s := testserver.New(t)
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/account/whoami", "", nil)
	s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", "nonsense", nil)
	u := s.Register("dave", "pw")
	// The query parameter form still works for older clients.
	if r := s.MustOK("GET", "/_matrix/client/v3/account/whoami?access_token="+u.AccessToken, "", nil); r.Get("user_id").String() != u.UserID {
		t.Fatalf("query token: %s", r)
	}
}

func TestRegistrationRemembersParamsAndIsIdempotent(t *testing.T) {
	s := testserver.New(t)
	// The first request names the user; the second carries only auth.
	r := s.Request("POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "frank", "password": "pw", "device_id": "FRANKDEV", "inhibit_login": false,
	})
	session := r.Get("session").String()
	if r.Status != 401 || session == "" {
		t.Fatalf("first request: %s", r)
	}
	done := s.MustOK("POST", "/_matrix/client/v3/register", "", map[string]any{
		"auth": map[string]string{"type": "m.login.dummy", "session": session},
	})
	if done.Get("user_id").String() != "@frank:localhost" || done.Get("device_id").String() != "FRANKDEV" {
		t.Fatalf("remembered params: %s", done)
	}
	// Repeating the completed request gets the same answer, not a new user.
	again := s.MustOK("POST", "/_matrix/client/v3/register", "", map[string]any{
		"auth": map[string]string{"type": "m.login.dummy", "session": session},
	})
	if again.Get("user_id").String() != "@frank:localhost" || again.Get("access_token").String() != done.Get("access_token").String() {
		t.Fatalf("replay: %s", again)
	}
	s.Login("frank", "pw")

	// inhibit_login from the first request is remembered too.
	r = s.Request("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "gina", "password": "pw", "inhibit_login": true})
	done = s.MustOK("POST", "/_matrix/client/v3/register", "", map[string]any{
		"auth": map[string]string{"type": "m.login.dummy", "session": r.Get("session").String()},
	})
	if done.Get("device_id").Exists() || done.Get("access_token").Exists() {
		t.Fatalf("inhibit_login not remembered: %s", done)
	}
}

func TestInvalidUTF8IsNotJSON(t *testing.T) {
	s := testserver.New(t)
	s.ExpectError(400, "M_NOT_JSON", "POST", "/_matrix/client/v3/register", "", []byte("{\"username\":\"a\x81\"}"))
}

// User IDs may hold "/": escaped in a path they must stay one segment.
func TestSlashInUserIDPath(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("a/b", "pw")
	r := s.MustOK("GET", "/_matrix/client/v3/profile/"+url.PathEscape(u.UserID), "", nil)
	if r.Get("displayname").String() != "a/b" {
		t.Fatalf("profile of %s: %s", u.UserID, r)
	}
}
