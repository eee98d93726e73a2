package clientapi_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/tidwall/gjson"
)

const profilePath = "/_matrix/client/v3/profile/"

func TestProfileSetAndGet(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")

		// Lookups need no token; a new account is named after its localpart
		// and has no avatar, which is left out rather than empty.
		r := s.MustOK("GET", profilePath+alice.UserID, "", nil)
		if r.Get("displayname").String() != "alice" || r.Get("avatar_url").Exists() {
			t.Fatalf("new profile: %s", r)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", profilePath+alice.UserID+"/avatar_url", "", nil)

		s.MustOK("PUT", profilePath+alice.UserID+"/displayname", alice.AccessToken, map[string]string{"displayname": "Alice ✨"})
		s.MustOK("PUT", "/_matrix/client/r0/profile/"+alice.UserID+"/avatar_url", alice.AccessToken, map[string]string{"avatar_url": "mxc://localhost/abc_DEF-123"})
		r = s.MustOK("GET", profilePath+alice.UserID, bob.AccessToken, nil)
		if r.Get("displayname").String() != "Alice ✨" || r.Get("avatar_url").String() != "mxc://localhost/abc_DEF-123" {
			t.Fatalf("profile: %s", r)
		}
		if r := s.MustOK("GET", profilePath+alice.UserID+"/displayname", "", nil); r.Get("displayname").String() != "Alice ✨" || len(r.JSON().Map()) != 1 {
			t.Fatalf("displayname: %s", r)
		}
		if r := s.MustOK("GET", "/_matrix/client/r0/profile/"+alice.UserID+"/avatar_url", "", nil); r.Get("avatar_url").String() != "mxc://localhost/abc_DEF-123" {
			t.Fatalf("avatar_url: %s", r)
		}

		// An empty avatar_url clears it; DELETE clears a field too.
		s.MustOK("PUT", profilePath+alice.UserID+"/avatar_url", alice.AccessToken, map[string]string{"avatar_url": ""})
		s.ExpectError(404, "M_NOT_FOUND", "GET", profilePath+alice.UserID+"/avatar_url", "", nil)
		s.MustOK("PUT", profilePath+alice.UserID+"/avatar_url", alice.AccessToken, map[string]string{"avatar_url": "mxc://example.org:8448/x"})
		s.MustOK("DELETE", profilePath+alice.UserID+"/avatar_url", alice.AccessToken, nil)
		s.MustOK("DELETE", profilePath+alice.UserID+"/displayname", alice.AccessToken, nil)
		if r := s.MustOK("GET", profilePath+alice.UserID, "", nil); r.String() != "200 {}" {
			t.Fatalf("cleared profile: %s", r)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", profilePath+alice.UserID+"/displayname", "", nil)

		// Bob's profile was never touched.
		if r := s.MustOK("GET", profilePath+bob.UserID+"/displayname", "", nil); r.Get("displayname").String() != "bob" {
			t.Fatalf("bob: %s", r)
		}
	})
}

func TestProfileLookupErrors(t *testing.T) {
	s := testserver.New(t)
	s.Register("carol", "pw")
	dave := s.Register("dave", "pw")
	if err := s.Server.Accounts.Deactivate(context.Background(), "dave"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path    string
		status  int
		errcode string
	}{
		{"@nobody:localhost", 404, "M_NOT_FOUND"},
		{"@nobody:localhost/displayname", 404, "M_NOT_FOUND"},
		{dave.UserID, 404, "M_NOT_FOUND"},
		{dave.UserID + "/displayname", 404, "M_NOT_FOUND"},
		// User IDs are case-sensitive and local ones lower-case.
		{"@CAROL:localhost", 404, "M_NOT_FOUND"},
		// Another server's users are asked over federation: unreachable here.
		{"@carol:elsewhere.example", 502, "M_UNKNOWN"},
		{"@carol:elsewhere.example/avatar_url", 502, "M_UNKNOWN"},
		{"carol", 400, "M_INVALID_PARAM"},
		{"@carol", 400, "M_INVALID_PARAM"},
		{"@:localhost", 400, "M_INVALID_PARAM"},
		{"@carol:bad_server!", 400, "M_INVALID_PARAM"},
		{"carol/displayname", 400, "M_INVALID_PARAM"},
		// Keys must follow the spec's grammar.
		{"@carol:localhost/Display", 400, "M_INVALID_PARAM"},
		{"@carol:localhost/nodots", 400, "M_INVALID_PARAM"},
		{"@carol:localhost/a." + strings.Repeat("b", 300), 400, "M_KEY_TOO_LARGE"},
		// Valid keys that are never stored are simply missing.
		{"@carol:localhost/m.tz", 404, "M_NOT_FOUND"},
		{"@carol:localhost/org.example.job", 404, "M_NOT_FOUND"},
	} {
		s.ExpectError(tc.status, tc.errcode, "GET", profilePath+tc.path, "", nil)
	}
}

func TestProfileSetErrors(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		erin := s.Register("erin", "pw")
		frank := s.Register("frank", "pw")
		dn := profilePath + erin.UserID + "/displayname"
		av := profilePath + erin.UserID + "/avatar_url"

		s.ExpectError(401, "M_MISSING_TOKEN", "PUT", dn, "", map[string]string{"displayname": "x"})
		s.ExpectError(401, "M_MISSING_TOKEN", "DELETE", dn, "", nil)
		// Only your own profile.
		s.ExpectError(403, "M_FORBIDDEN", "PUT", dn, frank.AccessToken, map[string]string{"displayname": "x"})
		s.ExpectError(403, "M_FORBIDDEN", "PUT", av, frank.AccessToken, map[string]string{"avatar_url": "mxc://a/b"})
		s.ExpectError(403, "M_FORBIDDEN", "DELETE", dn, frank.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "PUT", profilePath+"@erin:elsewhere.example/displayname", erin.AccessToken, map[string]string{"displayname": "x"})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", profilePath+"erin/displayname", erin.AccessToken, map[string]string{"displayname": "x"})

		// Custom fields cannot be stored, so they cannot be set or deleted.
		for _, key := range []string{"m.tz", "org.example.job"} {
			r := s.ExpectError(403, "M_FORBIDDEN", "PUT", profilePath+erin.UserID+"/"+key, erin.AccessToken, map[string]string{key: "x"})
			if !strings.Contains(r.Get("error").String(), "displayname and avatar_url") {
				t.Fatalf("unclear error: %s", r)
			}
			s.ExpectError(403, "M_FORBIDDEN", "DELETE", profilePath+erin.UserID+"/"+key, erin.AccessToken, nil)
		}
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", profilePath+erin.UserID+"/Bad", erin.AccessToken, map[string]string{"Bad": "x"})

		// Bodies.
		s.ExpectError(400, "M_NOT_JSON", "PUT", dn, erin.AccessToken, "not json")
		s.ExpectError(400, "M_NOT_JSON", "PUT", dn, erin.AccessToken, `["displayname"]`)
		s.ExpectError(400, "M_MISSING_PARAM", "PUT", dn, erin.AccessToken, map[string]string{"avatar_url": "mxc://a/b"})
		s.ExpectError(400, "M_BAD_JSON", "PUT", dn, erin.AccessToken, map[string]any{"displayname": 5})
		s.ExpectError(400, "M_BAD_JSON", "PUT", dn, erin.AccessToken, map[string]any{"displayname": nil})
		s.ExpectError(400, "M_BAD_JSON", "PUT", av, erin.AccessToken, map[string]any{"avatar_url": []string{}})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", dn, erin.AccessToken, map[string]string{"displayname": strings.Repeat("é", 129)})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", dn, erin.AccessToken, map[string]string{"displayname": "a\x00b"})
		s.MustOK("PUT", dn, erin.AccessToken, map[string]string{"displayname": strings.Repeat("é", 128)})
		for _, bad := range []string{
			"https://example.org/a.png", "mxc://", "mxc://localhost", "mxc://localhost/", "mxc://localhost/../../etc/passwd",
			"mxc://local host/a", "mxc://localhost/a/b", "mxc://localhost/a?b", "MXC://localhost/a",
			"mxc://localhost/" + strings.Repeat("a", 1024),
		} {
			s.ExpectError(400, "M_INVALID_PARAM", "PUT", av, erin.AccessToken, map[string]string{"avatar_url": bad})
		}

		// Nothing above changed the profile.
		r := s.MustOK("GET", profilePath+erin.UserID, "", nil)
		if r.Get("displayname").String() != strings.Repeat("é", 128) || r.Get("avatar_url").Exists() {
			t.Fatalf("profile: %s", r)
		}
		if r := s.MustOK("GET", profilePath+frank.UserID, "", nil); r.Get("displayname").String() != "frank" {
			t.Fatalf("frank: %s", r)
		}
	})
}

func TestProfileGuest(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	id, token := g.Get("user_id").String(), g.Get("access_token").String()
	// Guests may only change their display name.
	s.MustOK("PUT", profilePath+id+"/displayname", token, map[string]string{"displayname": "Visitor"})
	s.ExpectError(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "PUT", profilePath+id+"/avatar_url", token, map[string]string{"avatar_url": "mxc://a/b"})
	s.ExpectError(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "DELETE", profilePath+id+"/avatar_url", token, nil)
	if r := s.MustOK("GET", profilePath+id, "", nil); r.Get("displayname").String() != "Visitor" {
		t.Fatalf("guest profile: %s", r)
	}
	s.MustOK("DELETE", profilePath+id+"/displayname", token, nil)
	s.ExpectError(404, "M_NOT_FOUND", "GET", profilePath+id+"/displayname", "", nil)
}

// A profile change reaches the user's member event in their rooms, where
// clients read names and avatars.
func TestProfileChangeUpdatesMemberEvents(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := rsCreateRoom(t, s, alice, "12", "public")
	s.MustOK("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/displayname", alice.AccessToken, map[string]string{"displayname": "Alice A."})
	s.MustOK("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/avatar_url", alice.AccessToken, map[string]string{"avatar_url": "mxc://localhost/abc"})
	ev, err := s.Server.Roomserver.CurrentStateEvent(context.Background(), roomID, "m.room.member", alice.UserID)
	if err != nil || ev == nil {
		t.Fatal(err)
	}
	c := gjson.ParseBytes(ev.Content())
	if c.Get("displayname").String() != "Alice A." || c.Get("avatar_url").String() != "mxc://localhost/abc" || c.Get("membership").String() != "join" {
		t.Fatalf("member event after profile change: %s", ev.Content())
	}
}
