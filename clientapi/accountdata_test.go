package clientapi_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestAccountData(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		global := "/_matrix/client/v3/user/" + alice.UserID + "/account_data/org.example.config"
		room := "/_matrix/client/v3/user/" + alice.UserID + "/rooms/!room:localhost/account_data/org.example.config"
		v12Room := "/_matrix/client/r0/user/" + alice.UserID + "/rooms/!aBc-123_xyz/account_data/m.tag"

		s.ExpectError(404, "M_NOT_FOUND", "GET", global, alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", room, alice.AccessToken, nil)

		s.MustOK("PUT", global, alice.AccessToken, map[string]any{"theme": "dark", "n": 1})
		s.MustOK("PUT", room, alice.AccessToken, `{ "pinned" : [ "a", "b" ] }`)
		s.MustOK("PUT", v12Room, alice.AccessToken, map[string]any{"tags": map[string]any{"u.work": map[string]any{}}})

		if r := s.MustOK("GET", global, alice.AccessToken, nil); r.Get("theme").String() != "dark" || r.Get("n").Int() != 1 {
			t.Fatalf("global: %s", r)
		}
		// Room data is kept apart from global data of the same type.
		if r := s.MustOK("GET", room, alice.AccessToken, nil); r.Get("pinned.1").String() != "b" || r.Get("theme").Exists() {
			t.Fatalf("room: %s", r)
		}
		if r := s.MustOK("GET", v12Room, alice.AccessToken, nil); !r.Get("tags.u\\.work").Exists() {
			t.Fatalf("room v12: %s", r)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/user/"+alice.UserID+"/rooms/!other:localhost/account_data/org.example.config", alice.AccessToken, nil)

		// Putting again replaces.
		s.MustOK("PUT", global, alice.AccessToken, map[string]any{})
		if r := s.MustOK("GET", global, alice.AccessToken, nil); r.String() != "200 {}" {
			t.Fatalf("replaced: %s", r)
		}

		// Bob neither sees nor changes Alice's data, and has none of his own.
		s.ExpectError(403, "M_FORBIDDEN", "GET", global, bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "PUT", global, bob.AccessToken, map[string]any{"x": 1})
		s.ExpectError(403, "M_FORBIDDEN", "GET", room, bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "PUT", room, bob.AccessToken, map[string]any{"x": 1})
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/user/"+bob.UserID+"/account_data/org.example.config", bob.AccessToken, nil)
		s.ExpectError(401, "M_MISSING_TOKEN", "GET", global, "", nil)
	})
}

func TestAccountDataErrors(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		u := s.Register("carol", "pw")
		base := "/_matrix/client/v3/user/" + u.UserID
		global := base + "/account_data/org.example.x"

		// Types the server manages are refused, globally and per room, and
		// nothing is stored.
		for _, typ := range []string{"m.fully_read", "m.push_rules"} {
			for _, path := range []string{base + "/account_data/" + typ, base + "/rooms/!r:localhost/account_data/" + typ} {
				s.ExpectError(http.StatusMethodNotAllowed, "M_BAD_JSON", "PUT", path, u.AccessToken, map[string]any{"event_id": "$e"})
				s.ExpectError(404, "M_NOT_FOUND", "GET", path, u.AccessToken, nil)
			}
		}

		for _, body := range []string{"", "nope", `"string"`, `[1]`, `5`, `null`, `{"a":`, "{\"a\": \"\xff\"}"} {
			s.ExpectError(400, "M_NOT_JSON", "PUT", global, u.AccessToken, body)
		}
		big := `{"a": "` + strings.Repeat("x", 64<<10) + `"}`
		s.ExpectError(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "PUT", global, u.AccessToken, big)
		s.MustOK("PUT", global, u.AccessToken, `{"a": "`+strings.Repeat("x", 60<<10)+`"}`)

		for _, roomID := range []string{"room", "%23alias:localhost", "!", "!:localhost", "!a:bad_server!", "!a:", "!a%20b", "!a%00:localhost", "!" + strings.Repeat("a", 300)} {
			path := base + "/rooms/" + roomID + "/account_data/org.example.x"
			s.ExpectError(400, "M_INVALID_PARAM", "GET", path, u.AccessToken, nil)
			s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, u.AccessToken, map[string]any{})
		}
		for _, typ := range []string{strings.Repeat("t", 256), "a%00b", "%ff"} {
			s.ExpectError(400, "M_INVALID_PARAM", "PUT", base+"/account_data/"+typ, u.AccessToken, map[string]any{})
			s.ExpectError(400, "M_INVALID_PARAM", "GET", base+"/account_data/"+typ, u.AccessToken, nil)
		}
		// Other users' IDs in any spelling are someone else.
		s.ExpectError(403, "M_FORBIDDEN", "GET", "/_matrix/client/v3/user/@CAROL:localhost/account_data/org.example.x", u.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "PUT", "/_matrix/client/v3/user/carol/account_data/org.example.x", u.AccessToken, map[string]any{})
	})
}

func TestAccountDataGuest(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	path := "/_matrix/client/v3/user/" + g.Get("user_id").String() + "/account_data/org.example.x"
	token := g.Get("access_token").String()
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "PUT", path, token, map[string]any{})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "GET", path, token, nil)
}
