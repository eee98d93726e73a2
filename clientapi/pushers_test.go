package clientapi_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

const (
	pushersPath    = "/_matrix/client/v3/pushers"
	setPusherPath  = "/_matrix/client/v3/pushers/set"
	gatewayURL     = "https://push.example.com/_matrix/push/v1/notify"
	notificationsP = "/_matrix/client/v3/notifications"
)

// httpPusher is a valid http pusher body, changed by the given fields.
func httpPusher(changes map[string]any) map[string]any {
	b := map[string]any{
		"kind": "http", "app_id": "com.example.app", "pushkey": "key-1", "app_display_name": "Example",
		"device_display_name": "Phone", "lang": "en", "data": map[string]any{"url": gatewayURL},
	}
	for k, v := range changes {
		if v == nil {
			delete(b, k)
		} else {
			b[k] = v
		}
	}
	return b
}

func listPushers(t *testing.T, s *testserver.Server, u *testserver.User) gjson.Result {
	t.Helper()
	return s.MustOK("GET", pushersPath, u.AccessToken, nil).JSON().Get("pushers")
}

func TestPushers(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		if got := listPushers(t, s, alice); got.Raw != "[]" {
			t.Fatalf("pushers of a new user: %s", got.Raw)
		}

		// Everything set is listed back, custom data included (SyTest's
		// 06_get_pusher.pl sends a format outside the spec's enum).
		s.MustOK("POST", setPusherPath, alice.AccessToken, httpPusher(map[string]any{
			"profile_tag": "tag", "pushkey": "This is my pushkey",
			"data": map[string]any{"url": gatewayURL, "format": "id_event_only", "testcustom": "custom"},
		}))
		p := listPushers(t, s, alice)
		if len(p.Array()) != 1 {
			t.Fatalf("pushers: %s", p.Raw)
		}
		for field, want := range map[string]string{"kind": "http", "app_id": "com.example.app", "pushkey": "This is my pushkey",
			"app_display_name": "Example", "device_display_name": "Phone", "lang": "en", "profile_tag": "tag",
			"data.url": gatewayURL, "data.format": "id_event_only", "data.testcustom": "custom"} {
			if got := p.Get("0." + field).String(); got != want {
				t.Errorf("%s = %q, want %q", field, got, want)
			}
		}

		// The same app ID and pushkey updates it.
		s.MustOK("POST", setPusherPath, alice.AccessToken, httpPusher(map[string]any{"pushkey": "This is my pushkey", "lang": "de"}))
		if p := listPushers(t, s, alice); len(p.Array()) != 1 || p.Get("0.lang").String() != "de" || p.Get("0.profile_tag").Exists() {
			t.Fatalf("after an update: %s", p.Raw)
		}
		// Another pushkey is another pusher; an email pusher too.
		s.MustOK("POST", setPusherPath, alice.AccessToken, httpPusher(map[string]any{"pushkey": "key-2"}))
		s.MustOK("POST", setPusherPath, alice.AccessToken, httpPusher(map[string]any{"kind": "email", "app_id": "m.email",
			"pushkey": "alice@example.com", "data": map[string]any{}}))
		if p := listPushers(t, s, alice); len(p.Array()) != 3 {
			t.Fatalf("three pushers: %s", p.Raw)
		}

		// Without append, another user taking the app ID and pushkey takes it
		// from alice; with append both keep it.
		s.MustOK("POST", setPusherPath, bob.AccessToken, httpPusher(map[string]any{"pushkey": "key-2"}))
		if p := listPushers(t, s, alice); len(p.Array()) != 2 || p.Get(`#(pushkey=="key-2")`).Exists() {
			t.Fatalf("alice's pushers after bob took key-2: %s", p.Raw)
		}
		s.MustOK("POST", setPusherPath, alice.AccessToken, httpPusher(map[string]any{"pushkey": "key-2", "append": true}))
		if len(listPushers(t, s, alice).Array()) != 3 || len(listPushers(t, s, bob).Array()) != 1 {
			t.Fatal("append did not keep both")
		}

		// kind null deletes; deleting what is not there is fine.
		s.MustOK("POST", setPusherPath, alice.AccessToken, map[string]any{"kind": nil, "app_id": "com.example.app", "pushkey": "key-2"})
		s.MustOK("POST", setPusherPath, alice.AccessToken, map[string]any{"kind": nil, "app_id": "com.example.app", "pushkey": "key-2"})
		if p := listPushers(t, s, alice); len(p.Array()) != 2 || p.Get(`#(pushkey=="key-2")`).Exists() {
			t.Fatalf("after deleting: %s", p.Raw)
		}
		if len(listPushers(t, s, bob).Array()) != 1 {
			t.Fatal("deleting alice's pusher deleted bob's")
		}
	})
}

func TestPusherErrors(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("alice", "pw")
	for _, tc := range []struct {
		name    string
		body    any
		errcode string
		message string
	}{
		{"not JSON", "{", "M_NOT_JSON", ""},
		{"no kind", httpPusher(map[string]any{"kind": nil}), "M_MISSING_PARAM", "kind"},
		{"no app_id", httpPusher(map[string]any{"app_id": nil}), "M_MISSING_PARAM", "app_id"},
		{"no pushkey, no kind", map[string]any{"app_id": "a"}, "M_MISSING_PARAM", "kind, pushkey"},
		{"no lang nor data", httpPusher(map[string]any{"lang": nil, "data": nil}), "M_MISSING_PARAM", "lang, data"},
		{"no display names", httpPusher(map[string]any{"app_display_name": nil, "device_display_name": nil}), "M_MISSING_PARAM", "app_display_name, device_display_name"},
		{"kind not a string", httpPusher(map[string]any{"kind": 5}), "M_BAD_JSON", ""},
		{"unknown kind", httpPusher(map[string]any{"kind": "carrier_pigeon"}), "M_INVALID_PARAM", ""},
		{"app_id not a string", httpPusher(map[string]any{"app_id": 1}), "M_BAD_JSON", ""},
		{"empty app_id", httpPusher(map[string]any{"app_id": ""}), "M_INVALID_PARAM", ""},
		{"app_id too long", httpPusher(map[string]any{"app_id": strings.Repeat("é", 65)}), "M_INVALID_PARAM", ""},
		{"pushkey too long", httpPusher(map[string]any{"pushkey": strings.Repeat("k", 513)}), "M_INVALID_PARAM", ""},
		{"data not an object", httpPusher(map[string]any{"data": "x"}), "M_BAD_JSON", ""},
		{"no url", httpPusher(map[string]any{"data": map[string]any{"format": "event_id_only"}}), "M_MISSING_PARAM", ""},
		{"url not a string", httpPusher(map[string]any{"data": map[string]any{"url": 5}}), "M_BAD_JSON", ""},
		{"relative url", httpPusher(map[string]any{"data": map[string]any{"url": "/_matrix/push/v1/notify"}}), "M_INVALID_PARAM", ""},
		{"other scheme", httpPusher(map[string]any{"data": map[string]any{"url": "ftp://push.example.com/_matrix/push/v1/notify"}}), "M_INVALID_PARAM", ""},
		{"wrong path", httpPusher(map[string]any{"data": map[string]any{"url": "https://push.example.com/notify"}}), "M_INVALID_PARAM", ""},
		{"email with another app_id", httpPusher(map[string]any{"kind": "email", "pushkey": "a@example.com"}), "M_INVALID_PARAM", ""},
		{"email without an address", httpPusher(map[string]any{"kind": "email", "app_id": "m.email", "pushkey": "nobody"}), "M_INVALID_PARAM", ""},
		{"append not a boolean", httpPusher(map[string]any{"append": "yes"}), "M_BAD_JSON", ""},
		{"profile_tag not a string", httpPusher(map[string]any{"profile_tag": 1}), "M_BAD_JSON", ""},
	} {
		r := s.ExpectError(400, tc.errcode, "POST", setPusherPath, u.AccessToken, tc.body)
		if !strings.Contains(r.Get("error").String(), tc.message) {
			t.Errorf("%s: error %q does not name %q", tc.name, r.Get("error").String(), tc.message)
		}
	}
	if got := listPushers(t, s, u); got.Raw != "[]" {
		t.Fatalf("a failed request stored a pusher: %s", got.Raw)
	}
	s.ExpectError(405, "M_UNRECOGNIZED", "POST", pushersPath, u.AccessToken, httpPusher(nil))
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", pushersPath, "", nil)

	// A user's pushers are bounded.
	for i := 0; i < 100; i++ {
		s.MustOK("POST", setPusherPath, u.AccessToken, httpPusher(map[string]any{"pushkey": "k" + strconv.Itoa(i)}))
	}
	s.ExpectError(400, "M_UNKNOWN", "POST", setPusherPath, u.AccessToken, httpPusher(map[string]any{"pushkey": "one too many"}))
	s.MustOK("POST", setPusherPath, u.AccessToken, httpPusher(map[string]any{"pushkey": "k7", "lang": "fr"})) // updates still work
}

func TestNotificationsParameters(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("alice", "pw")
	r := s.MustOK("GET", notificationsP, u.AccessToken, nil).JSON()
	if r.Get("notifications").Raw != "[]" || r.Get("next_token").Exists() {
		t.Fatalf("no notifications: %s", r.Raw)
	}
	s.MustOK("GET", notificationsP+"?limit=5&only=highlight&from=12", u.AccessToken, nil)
	for _, q := range []string{"from=abc", "from=-1", "from=0", "limit=0", "limit=-3", "limit=x"} {
		s.ExpectError(400, "M_INVALID_PARAM", "GET", notificationsP+"?"+q, u.AccessToken, nil)
	}
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", notificationsP, "", nil)
}
