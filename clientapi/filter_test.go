package clientapi_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestFilterUploadAndDownload(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		base := "/_matrix/client/v3/user/" + alice.UserID + "/filter"

		filter := `{
			"room": {
				"state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"], "lazy_load_members": true},
				"timeline": {"limit": 10, "types": ["m.room.message"], "not_senders": ["@spam:example.com"], "contains_url": false},
				"ephemeral": {"types": ["m.receipt", "m.typing"]},
				"include_leave": true,
				"rooms": []
			},
			"presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
			"account_data": {"limit": 5},
			"event_format": "client",
			"event_fields": ["type", "content", "sender"],
			"org.example.future": {"kept": true}
		}`
		r := s.MustOK("POST", base, alice.AccessToken, filter)
		id := r.Get("filter_id").String()
		if id == "" || strings.HasPrefix(id, "{") {
			t.Fatalf("filter_id: %s", r)
		}
		r = s.MustOK("GET", base+"/"+id, alice.AccessToken, nil)
		// The filter comes back as sent, fields unknown to the server too.
		for path, want := range map[string]string{
			"room.timeline.limit":          "10",
			"room.timeline.contains_url":   "false",
			"room.state.lazy_load_members": "true",
			"room.rooms":                   "[]",
			"room.ephemeral.types.1":       "m.typing",
			"event_fields.2":               "sender",
			"org\\.example\\.future.kept":  "true",
			"presence.not_senders.0":       "@alice:example.com",
			"account_data.limit":           "5",
			"room.state.not_rooms.0":       "!726s6s6q:example.com",
			"room.timeline.not_senders.0":  "@spam:example.com",
			"room.include_leave":           "true",
			"event_format":                 "client",
			"room.timeline.types.0":        "m.room.message",
			"room.state.types.0":           "m.room.*",
			"presence.types.0":             "m.presence",
			"room.ephemeral.types.0":       "m.receipt",
		} {
			if got := r.Get(path).Raw; strings.Trim(got, `"`) != want {
				t.Errorf("%s = %s, want %s", path, got, want)
			}
		}

		// Every upload gets its own ID; r0 works too.
		r2 := s.MustOK("POST", "/_matrix/client/r0/user/"+alice.UserID+"/filter", alice.AccessToken, map[string]any{})
		id2 := r2.Get("filter_id").String()
		if id2 == id {
			t.Fatalf("same ID twice: %s", id)
		}
		if r := s.MustOK("GET", base+"/"+id2, alice.AccessToken, nil); r.String() != "200 {}" {
			t.Fatalf("empty filter: %s", r)
		}

		// Filters are private, and unknown IDs are not found.
		s.ExpectError(403, "M_FORBIDDEN", "GET", base+"/"+id, bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "POST", base, bob.AccessToken, map[string]any{})
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/user/"+bob.UserID+"/filter/"+id, bob.AccessToken, nil)
		for _, unknown := range []string{"999", "abc", "%ff", "%00", strings.Repeat("1", 30)} {
			s.ExpectError(404, "M_NOT_FOUND", "GET", base+"/"+unknown, alice.AccessToken, nil)
		}
		s.ExpectError(401, "M_MISSING_TOKEN", "POST", base, "", map[string]any{})
		s.ExpectError(401, "M_MISSING_TOKEN", "GET", base+"/"+id, "", nil)
	})
}

func TestFilterValidation(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		u := s.Register("carol", "pw")
		base := "/_matrix/client/v3/user/" + u.UserID + "/filter"

		for _, body := range []string{"", "nope", "[]", `"x"`, "null", `{"a":`, "{\"event_fields\": [\"\xff\"]}"} {
			s.ExpectError(400, "M_NOT_JSON", "POST", base, u.AccessToken, body)
		}
		for body, field := range map[string]string{
			`{"event_fields": "type"}`:                                                       "event_fields",
			`{"event_format": "raw"}`:                                                        "event_format",
			`{"presence": {"limit": 0}}`:                                                     "presence.limit",
			`{"account_data": {"types": [1]}}`:                                               "account_data.types",
			`{"room": []}`:                                                                   "room",
			`{"room": {"rooms": ["not-a-room"]}}`:                                            "room.rooms",
			`{"room": {"include_leave": "yes"}}`:                                             "room.include_leave",
			`{"room": {"timeline": {"limit": -5}}}`:                                          "room.timeline.limit",
			`{"room": {"timeline": {"limit": 2.5}}}`:                                         "room.timeline.limit",
			`{"room": {"state": {"lazy_load_members": 1}}}`:                                  "room.state.lazy_load_members",
			`{"room": {"ephemeral": {"not_senders": ["bob"]}}}`:                              "room.ephemeral.not_senders",
			`{"room": {"account_data": {"contains_url": "no"}}}`:                             "room.account_data.contains_url",
			`{"room": {"timeline": {"unread_thread_notifications": null, "not_rooms": {}}}}`: "room.timeline.not_rooms",
			`{"presence": {"types": [` + strings.Repeat(`"t",`, 1000) + `"t"]}}`:             "presence.types",
		} {
			r := s.ExpectError(400, "M_BAD_JSON", "POST", base, u.AccessToken, body)
			if !strings.Contains(r.Get("error").String(), field) {
				t.Errorf("%s: error does not name %s: %s", body, field, r)
			}
		}
		big := `{"event_fields": ["` + strings.Repeat("a", 64<<10) + `"]}`
		s.ExpectError(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "POST", base, u.AccessToken, big)

		// The same fields with good values are accepted.
		r := s.MustOK("POST", base, u.AccessToken, map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 1}}})
		if r := s.MustOK("GET", base+"/"+r.Get("filter_id").String(), u.AccessToken, nil); r.Get("room.timeline.limit").Int() != 1 {
			t.Fatalf("stored: %s", r)
		}
	})
}

func TestFilterGuest(t *testing.T) {
	// Guests may /sync, and so may define filters for it.
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	base := "/_matrix/client/v3/user/" + g.Get("user_id").String() + "/filter"
	token := g.Get("access_token").String()
	id := s.MustOK("POST", base, token, map[string]any{"room": map[string]any{}}).Get("filter_id").String()
	s.MustOK("GET", base+"/"+id, token, nil)
}
