package clientapi_test

import (
	"testing"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestLoginToken(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		flows := s.MustOK("GET", "/_matrix/client/v3/login", "", nil)
		if !flows.Get(`flows.#(type=="m.login.token").get_login_token`).Bool() || !flows.Get(`flows.#(type=="m.login.password")`).Exists() {
			t.Fatalf("login flows: %s", flows)
		}
		const getToken = "/_matrix/client/v1/login/get_token"
		// Always behind user-interactive authentication.
		session := expectChallenge(t, s.Request("POST", getToken, alice.AccessToken, map[string]any{}), "")
		s.ExpectError(401, "M_FORBIDDEN", "POST", getToken, alice.AccessToken, map[string]any{"auth": passwordAuth(alice.UserID, "wrong", session)})
		r := s.MustOK("POST", getToken, alice.AccessToken, map[string]any{"auth": passwordAuth(alice.UserID, "pw", session)})
		token := r.Get("login_token").String()
		if token == "" || r.Get("expires_in_ms").Int() != 120000 {
			t.Fatalf("get_token: %s", r)
		}
		// The session is spent: another token needs another proof.
		expectChallenge(t, s.Request("POST", getToken, alice.AccessToken, map[string]any{"auth": map[string]any{"session": session}}), "")

		login := map[string]any{"type": "m.login.token", "token": token, "initial_device_display_name": "second"}
		r = s.MustOK("POST", "/_matrix/client/v3/login", "", login)
		if r.Get("user_id").String() != alice.UserID || r.Get("access_token").String() == "" || r.Get("device_id").String() == alice.DeviceID {
			t.Fatalf("token login: %s", r)
		}
		if w := s.MustOK("GET", "/_matrix/client/v3/account/whoami", r.Get("access_token").String(), nil); w.Get("user_id").String() != alice.UserID {
			t.Fatalf("whoami with the new device: %s", w)
		}
		// Single use.
		s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", login)
		s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.token", "token": "plxl_nonsense"})
		s.ExpectError(400, "M_MISSING_PARAM", "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.token"})
		s.ExpectError(401, "M_MISSING_TOKEN", "POST", getToken, "", map[string]any{})
	})
}
