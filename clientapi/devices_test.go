package clientapi_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

// passwordAuth is the auth object of the m.login.password UIAA stage.
func passwordAuth(user, password, session string) map[string]any {
	return map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": user},
		"password":   password,
		"session":    session,
	}
}

// expectChallenge checks a UIAA 401 offering only the password flow, with
// errcode when a stage just failed, and returns its session.
func expectChallenge(t *testing.T, r *testserver.Response, errcode string) string {
	t.Helper()
	if r.Status != http.StatusUnauthorized || r.Get("flows.#").Int() != 1 ||
		r.Get("flows.0.stages.#").Int() != 1 || r.Get("flows.0.stages.0").String() != "m.login.password" ||
		r.Get("session").String() == "" || !r.Get("params").IsObject() {
		t.Fatalf("want a UIAA challenge for the password flow, got %s", r)
	}
	if r.Get("errcode").String() != errcode {
		t.Fatalf("want errcode %q in the challenge, got %s", errcode, r)
	}
	return r.Get("session").String()
}

func TestDeviceList(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		phone := s.MustOK("POST", "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "alice"},
			"password": "pw", "initial_device_display_name": "phone",
		})
		phoneID := phone.Get("device_id").String()
		bob := s.Register("bob", "pw")

		r := s.MustOK("GET", "/_matrix/client/v3/devices", alice.AccessToken, nil)
		if n := r.Get("devices.#").Int(); n != 2 {
			t.Fatalf("want 2 devices: %s", r)
		}
		for _, d := range r.Get("devices").Array() {
			if d.Get("last_seen_ip").String() != "127.0.0.1" || d.Get("last_seen_ts").Int() <= 0 {
				t.Fatalf("last seen: %s", d.Raw)
			}
			switch d.Get("device_id").String() {
			case phoneID:
				if d.Get("display_name").String() != "phone" {
					t.Fatalf("phone: %s", d.Raw)
				}
			case alice.DeviceID:
				// No name was given: the field is absent rather than "".
				if d.Get("display_name").Exists() {
					t.Fatalf("unnamed device: %s", d.Raw)
				}
			default:
				t.Fatalf("unexpected device: %s", d.Raw)
			}
		}

		r = s.MustOK("GET", "/_matrix/client/r0/devices/"+phoneID, alice.AccessToken, nil)
		if r.Get("device_id").String() != phoneID || r.Get("display_name").String() != "phone" {
			t.Fatalf("get device: %s", r)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/devices/NOSUCH", alice.AccessToken, nil)
		// Another user's device is not found either.
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/devices/"+bob.DeviceID, alice.AccessToken, nil)
		s.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/devices", "", nil)
	})
}

func TestDeviceRename(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	path := "/_matrix/client/v3/devices/" + alice.DeviceID

	s.MustOK("PUT", path, alice.AccessToken, map[string]any{"display_name": "laptop"})
	if r := s.MustOK("GET", path, alice.AccessToken, nil); r.Get("display_name").String() != "laptop" {
		t.Fatalf("renamed: %s", r)
	}
	// No display_name leaves the name alone.
	s.MustOK("PUT", path, alice.AccessToken, map[string]any{})
	if r := s.MustOK("GET", path, alice.AccessToken, nil); r.Get("display_name").String() != "laptop" {
		t.Fatalf("after empty update: %s", r)
	}

	s.ExpectError(404, "M_NOT_FOUND", "PUT", "/_matrix/client/v3/devices/NOSUCH", alice.AccessToken, map[string]any{"display_name": "x"})
	s.ExpectError(404, "M_NOT_FOUND", "PUT", "/_matrix/client/v3/devices/NOSUCH", alice.AccessToken, map[string]any{})
	s.ExpectError(404, "M_NOT_FOUND", "PUT", "/_matrix/client/v3/devices/"+bob.DeviceID, alice.AccessToken, map[string]any{"display_name": "mine"})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]any{"display_name": strings.Repeat("x", 257)})
	s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, `{"display_name": 5}`)
	s.ExpectError(400, "M_NOT_JSON", "PUT", path, alice.AccessToken, "nope")
	if r := s.MustOK("GET", path, alice.AccessToken, nil); r.Get("display_name").String() != "laptop" {
		t.Fatalf("failed updates changed the name: %s", r)
	}
	// Bob's device kept its (absent) name.
	if r := s.MustOK("GET", "/_matrix/client/v3/devices/"+bob.DeviceID, bob.AccessToken, nil); r.Get("display_name").Exists() {
		t.Fatalf("bob's device: %s", r)
	}
}

func TestDeleteDevice(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		other := s.Login("alice", "pw")
		path := "/_matrix/client/v3/devices/" + other.DeviceID

		// Without auth (and, as clients often send it, without a body).
		session := expectChallenge(t, s.Request("DELETE", path, alice.AccessToken, nil), "")
		// A wrong password keeps the session and says why.
		r := s.Request("DELETE", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "wrong", session)})
		if expectChallenge(t, r, "M_FORBIDDEN") != session {
			t.Fatalf("the session changed after a failed stage: %s", r)
		}
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", other.AccessToken, nil)
		// Bob's password proves nothing about alice: a plain 403, not a
		// stage to retry (SyTest: "requires UI auth user to match device owner").
		s.Register("bob", "bobpw")
		s.ExpectError(403, "M_FORBIDDEN", "DELETE", path, alice.AccessToken, map[string]any{"auth": passwordAuth("bob", "bobpw", session)})

		s.MustOK("DELETE", path, alice.AccessToken, map[string]any{"auth": passwordAuth("@alice:localhost", "pw", session)})
		r = s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", other.AccessToken, nil)
		if r.Get("soft_logout").Bool() {
			t.Fatalf("a deleted device is no soft logout: %s", r)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", path, alice.AccessToken, nil)
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil)

		// Deleting a device that is already gone still needs auth, then succeeds.
		session = expectChallenge(t, s.Request("DELETE", path, alice.AccessToken, map[string]any{}), "")
		s.MustOK("DELETE", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "pw", session)})

		// A device may delete itself.
		self := "/_matrix/client/v3/devices/" + alice.DeviceID
		session = expectChallenge(t, s.Request("DELETE", self, alice.AccessToken, nil), "")
		s.MustOK("DELETE", self, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "pw", session)})
		s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/devices", alice.AccessToken, nil)
	})
}

func TestDeleteDeviceSessionsAreBound(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	aliceOther := s.Login("alice", "pw")
	bobOther := s.Login("bob", "pw")

	// A session bob started cannot authorise alice's request.
	bobSession := expectChallenge(t, s.Request("DELETE", "/_matrix/client/v3/devices/"+bobOther.DeviceID, bob.AccessToken, nil), "")
	s.ExpectError(403, "M_FORBIDDEN", "DELETE", "/_matrix/client/v3/devices/"+bobOther.DeviceID, alice.AccessToken,
		map[string]any{"auth": passwordAuth("alice", "pw", bobSession)})

	// A session started to delete one device cannot delete another.
	session := expectChallenge(t, s.Request("DELETE", "/_matrix/client/v3/devices/NOTTHISONE", alice.AccessToken, nil), "")
	s.ExpectError(403, "M_FORBIDDEN", "DELETE", "/_matrix/client/v3/devices/"+aliceOther.DeviceID, alice.AccessToken,
		map[string]any{"auth": passwordAuth("alice", "pw", session)})
	// Nor serve another endpoint.
	s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/delete_devices", alice.AccessToken,
		map[string]any{"devices": []string{aliceOther.DeviceID}, "auth": passwordAuth("alice", "pw", session)})
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", aliceOther.AccessToken, nil)

	// A completed session is used up.
	path := "/_matrix/client/v3/devices/" + aliceOther.DeviceID
	session = expectChallenge(t, s.Request("DELETE", path, alice.AccessToken, nil), "")
	s.MustOK("DELETE", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "pw", session)})
	r := s.Request("DELETE", path, alice.AccessToken, map[string]any{"auth": map[string]any{"session": session}})
	if newSession := expectChallenge(t, r, ""); newSession == session {
		t.Fatalf("a completed session was reused: %s", r)
	}
}

func TestDeleteDevices(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		d1 := s.Login("alice", "pw")
		d2 := s.Login("alice", "pw")
		keep := s.Login("alice", "pw")
		bob := s.Register("bob", "pw")
		const path = "/_matrix/client/v3/delete_devices"

		s.ExpectError(400, "M_MISSING_PARAM", "POST", path, alice.AccessToken, map[string]any{})
		s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, `{"devices": "ABC"}`)
		// Bob's device in alice's list is ignored, as are unknown ones.
		body := map[string]any{"devices": []string{d1.DeviceID, d2.DeviceID, "NOSUCH", bob.DeviceID}}
		session := expectChallenge(t, s.Request("POST", path, alice.AccessToken, body), "")
		body["auth"] = passwordAuth("alice", "wrong", session)
		expectChallenge(t, s.Request("POST", path, alice.AccessToken, body), "M_FORBIDDEN")
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", d1.AccessToken, nil)
		body["auth"] = passwordAuth("alice", "pw", session)
		s.MustOK("POST", path, alice.AccessToken, body)

		for _, gone := range []*testserver.User{d1, d2} {
			s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", gone.AccessToken, nil)
		}
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", keep.AccessToken, nil)
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", bob.AccessToken, nil)
		r := s.MustOK("GET", "/_matrix/client/v3/devices", alice.AccessToken, nil)
		if r.Get("devices.#").Int() != 2 {
			t.Fatalf("want alice's first and kept devices left: %s", r)
		}
	})
}

func TestDeleteDevicesGuests(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	token, dev := g.Get("access_token").String(), g.Get("device_id").String()
	// Guests may look at and rename their devices, but not delete them.
	s.MustOK("GET", "/_matrix/client/v3/devices", token, nil)
	s.MustOK("PUT", "/_matrix/client/v3/devices/"+dev, token, map[string]any{"display_name": "guest"})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "DELETE", "/_matrix/client/v3/devices/"+dev, token, nil)
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", "/_matrix/client/v3/delete_devices", token, map[string]any{"devices": []string{dev}})
}

// Concurrent attempts on one session must not race (run with -race).
func TestDeleteDeviceConcurrentAttempts(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	for range 5 {
		other := s.Login("alice", "pw")
		path := "/_matrix/client/v3/devices/" + other.DeviceID
		session := expectChallenge(t, s.Request("DELETE", path, alice.AccessToken, nil), "")
		var wg sync.WaitGroup
		for i := range 6 {
			password := "wrong"
			if i == 0 {
				password = "pw"
			}
			wg.Go(func() {
				s.Request("DELETE", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", password, session)})
			})
		}
		wg.Wait()
		s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/client/v3/account/whoami", other.AccessToken, nil)
	}
}
