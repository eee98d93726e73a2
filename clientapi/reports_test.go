package clientapi_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// newAdmin makes a server admin and logs them in.
func newAdmin(t *testing.T, s *testserver.Server, localpart string) *testserver.User {
	t.Helper()
	if _, err := s.Server.Accounts.CreateAccount(context.Background(), localpart, "pw", true, false); err != nil {
		t.Fatal(err)
	}
	return s.Login(localpart, "pw")
}

func TestReports(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		admin := newAdmin(t, s, "admin")
		roomID := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat"})
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bob.AccessToken, map[string]any{})
		eventID := sendText(t, s, alice, roomID, "1", "rude")
		reportEvent := roomPath(roomID, "report", eventID)

		s.MustOK("POST", reportEvent, bob.AccessToken, map[string]any{"reason": "rude", "score": -50})
		s.MustOK("POST", roomPath(roomID, "report"), carol.AccessToken, map[string]any{"reason": ""}) // not joined: fine
		s.MustOK("POST", "/_matrix/client/v3/users/"+url.PathEscape(alice.UserID)+"/report", carol.AccessToken, map[string]any{"reason": "spam"})

		// Bad input and what may not be reported.
		s.ExpectError(404, "M_NOT_FOUND", "POST", reportEvent, carol.AccessToken, map[string]any{"reason": "x"}) // not joined
		s.ExpectError(404, "M_NOT_FOUND", "POST", roomPath(roomID, "report", "$nope"), bob.AccessToken, map[string]any{"reason": "x"})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", reportEvent, bob.AccessToken, map[string]any{"reason": "x", "score": -101})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", reportEvent, bob.AccessToken, map[string]any{"reason": "x", "score": 1})
		s.ExpectError(400, "M_BAD_JSON", "POST", reportEvent, bob.AccessToken, map[string]any{"reason": 5})
		long := make([]byte, 2001)
		for i := range long {
			long[i] = 'x'
		}
		s.ExpectError(400, "M_INVALID_PARAM", "POST", reportEvent, bob.AccessToken, map[string]any{"reason": string(long)})
		s.ExpectError(400, "M_MISSING_PARAM", "POST", roomPath(roomID, "report"), bob.AccessToken, map[string]any{})
		s.ExpectError(404, "M_NOT_FOUND", "POST", roomPath("!unknown:"+s.ServerName(), "report"), bob.AccessToken, map[string]any{"reason": "x"})
		s.ExpectError(404, "M_NOT_FOUND", "POST", "/_matrix/client/v3/users/"+url.PathEscape("@ghost:"+s.ServerName())+"/report", bob.AccessToken, map[string]any{"reason": "x"})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/users/ghost/report", bob.AccessToken, map[string]any{"reason": "x"})
		s.ExpectError(401, "M_MISSING_TOKEN", "POST", reportEvent, "", map[string]any{"reason": "x"})

		// The admins see them; others may not look.
		s.ExpectError(403, "M_FORBIDDEN", "GET", "/_plexus/admin/v1/reports", bob.AccessToken, nil)
		r := s.MustOK("GET", "/_plexus/admin/v1/reports", admin.AccessToken, nil)
		if r.Get("reports.#").Int() != 3 {
			t.Fatalf("reports: %s", r)
		}
		ev := r.Get(`reports.#(kind=="event")`)
		if ev.Get("event_id").String() != eventID || ev.Get("reporter").String() != bob.UserID || ev.Get("score").Int() != -50 ||
			ev.Get("user_id").String() != alice.UserID || ev.Get("reason").String() != "rude" {
			t.Fatalf("event report: %s", ev.Raw)
		}
		if r.Get(`reports.#(kind=="room").room_id`).String() != roomID || r.Get(`reports.#(kind=="user").user_id`).String() != alice.UserID {
			t.Fatalf("room and user reports: %s", r)
		}
	})
}
