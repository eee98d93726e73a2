package clientapi_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

// msSyncUntil polls /sync until cond holds (10 s at most).
func msSyncUntil(t *testing.T, s *testserver.Server, u *testserver.User, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=500", u.AccessToken, nil).JSON()
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("sync never satisfied the condition; last response: %s", r.Raw)
		}
	}
}

func tagsPath(u *testserver.User, roomID string, tag ...string) string {
	p := "/_matrix/client/v3/user/" + url.PathEscape(u.UserID) + "/rooms/" + url.PathEscape(roomID) + "/tags"
	if len(tag) > 0 {
		p += "/" + url.PathEscape(tag[0])
	}
	return p
}

func TestRoomTags(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := crCreateRoom(t, s, alice, map[string]any{})
		if r := s.MustOK("GET", tagsPath(alice, roomID), alice.AccessToken, nil); r.Get("tags").Raw != "{}" {
			t.Fatalf("tags of an untagged room: %s", r)
		}
		s.MustOK("PUT", tagsPath(alice, roomID, "m.favourite"), alice.AccessToken, map[string]any{"order": 0.25})
		s.MustOK("PUT", tagsPath(alice, roomID, "u.work"), alice.AccessToken, map[string]any{})
		r := s.MustOK("GET", tagsPath(alice, roomID), alice.AccessToken, nil)
		if r.Get("tags.m\\.favourite.order").Float() != 0.25 || !r.Get("tags.u\\.work").Exists() {
			t.Fatalf("tags: %s", r)
		}
		// /sync carries them as the room's m.tag account data.
		msSyncUntil(t, s, alice, func(r gjson.Result) bool {
			ev := r.Get("rooms.join." + gjson.Escape(roomID) + ".account_data.events.#(type==\"m.tag\")")
			return ev.Get("content.tags.m\\.favourite.order").Float() == 0.25 && ev.Get("content.tags.u\\.work").Exists()
		})
		s.MustOK("DELETE", tagsPath(alice, roomID, "u.work"), alice.AccessToken, nil)
		if r := s.MustOK("GET", tagsPath(alice, roomID), alice.AccessToken, nil); r.Get("tags.u\\.work").Exists() {
			t.Fatalf("deleted tag still there: %s", r)
		}
		// Bad input.
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", tagsPath(alice, roomID, "u.x"), alice.AccessToken, map[string]any{"order": 2})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", tagsPath(alice, roomID, "u.x"), alice.AccessToken, map[string]any{"order": "0.5"})
		s.ExpectError(400, "M_NOT_JSON", "PUT", tagsPath(alice, roomID, "u.x"), alice.AccessToken, "[1]")
		long := make([]byte, 256)
		for i := range long {
			long[i] = 'a'
		}
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", tagsPath(alice, roomID, string(long)), alice.AccessToken, map[string]any{})
		s.ExpectError(403, "M_FORBIDDEN", "GET", tagsPath(alice, roomID), bob.AccessToken, nil)
	})
}

func TestWellKnownSupport(t *testing.T) {
	s := testserver.New(t)
	s.ExpectError(404, "M_NOT_FOUND", "GET", "/.well-known/matrix/support", "", nil)
	s = testserver.New(t, func(c *config.Config) {
		c.WellKnown.Support = config.Support{SupportPage: "https://example.org/help",
			Contacts: []config.SupportContact{{Role: "m.role.admin", MatrixID: "@admin:localhost"}}}
	})
	r := s.MustOK("GET", "/.well-known/matrix/support", "", nil)
	if r.Get("support_page").String() != "https://example.org/help" || r.Get("contacts.0.role").String() != "m.role.admin" ||
		r.Get("contacts.0.matrix_id").String() != "@admin:localhost" || r.Get("contacts.0.email_address").Exists() {
		t.Fatalf("support: %s", r)
	}
}

func TestThreepidEndpointsAnswerWithMatrixErrors(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	email := map[string]any{"client_secret": "s", "email": "a@example.org", "send_attempt": 1}
	msisdn := map[string]any{"client_secret": "s", "country": "GB", "phone_number": "07700900001", "send_attempt": 1}
	const c = "/_matrix/client/v3"
	for _, tc := range []struct {
		path, token string
		body        any
		status      int
		errcode     string
	}{
		{"/account/3pid", alice.AccessToken, map[string]any{"three_pid_creds": map[string]any{"client_secret": "s", "sid": "1"}}, 403, "M_THREEPID_AUTH_FAILED"},
		{"/account/3pid", alice.AccessToken, map[string]any{}, 400, "M_MISSING_PARAM"},
		{"/account/3pid/add", alice.AccessToken, map[string]any{"client_secret": "s", "sid": "1"}, 403, "M_THREEPID_AUTH_FAILED"},
		{"/account/3pid/bind", alice.AccessToken, map[string]any{"client_secret": "s", "sid": "1", "id_server": "id.example.org", "id_access_token": "x"}, 403, "M_THREEPID_DENIED"},
		{"/account/3pid/unbind", alice.AccessToken, map[string]any{"medium": "email", "address": "a@example.org"}, 400, "M_THREEPID_NOT_FOUND"},
		{"/account/3pid/delete", alice.AccessToken, map[string]any{"medium": "email", "address": "a@example.org"}, 400, "M_THREEPID_NOT_FOUND"},
		{"/account/3pid/delete", alice.AccessToken, map[string]any{"medium": "fax", "address": "1"}, 400, "M_INVALID_PARAM"},
		{"/account/3pid/email/requestToken", "", email, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
		{"/account/3pid/msisdn/requestToken", "", msisdn, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
		{"/register/email/requestToken", "", email, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
		{"/register/msisdn/requestToken", "", msisdn, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"},
		{"/register/email/requestToken", "", map[string]any{"email": "a@example.org"}, 400, "M_MISSING_PARAM"},
		{"/account/password/email/requestToken", "", email, 400, "M_THREEPID_NOT_FOUND"},
		{"/account/password/msisdn/requestToken", "", msisdn, 400, "M_THREEPID_NOT_FOUND"},
	} {
		s.ExpectError(tc.status, tc.errcode, "POST", c+tc.path, tc.token, tc.body)
	}
	s.ExpectError(401, "M_MISSING_TOKEN", "POST", c+"/account/3pid/add", "", map[string]any{})
}

func TestMutualRooms(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		shared := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat"})
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(shared), bob.AccessToken, map[string]any{})
		crCreateRoom(t, s, alice, map[string]any{}) // alice alone
		invited := crCreateRoom(t, s, alice, map[string]any{"invite": []string{bob.UserID}})
		for _, path := range []string{"/_matrix/client/v1/mutual_rooms", "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms"} {
			r := s.MustOK("GET", path+"?user_id="+url.QueryEscape(bob.UserID), alice.AccessToken, nil)
			if r.Get("joined.#").Int() != 1 || r.Get("joined.0").String() != shared || r.Get("count").Int() != 1 || r.Get("next_batch").Exists() {
				t.Fatalf("%s: %s (invited room %s must not count)", path, r, invited)
			}
		}
		r := s.MustOK("GET", "/_matrix/client/v1/mutual_rooms?user_id="+url.QueryEscape(carol.UserID), alice.AccessToken, nil)
		if r.Get("joined.#").Int() != 0 || !r.Get("joined").IsArray() {
			t.Fatalf("no shared rooms: %s", r)
		}
		s.ExpectError(400, "M_MISSING_PARAM", "GET", "/_matrix/client/v1/mutual_rooms", alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v1/mutual_rooms?user_id="+url.QueryEscape(alice.UserID), alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v1/mutual_rooms?user_id=bob", alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v1/mutual_rooms?user_id="+url.QueryEscape(bob.UserID)+"&from=x", alice.AccessToken, nil)
	})
}

func TestIgnoredUsersHiddenFromMessagesContextAndInvites(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat"})
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bob.AccessToken, map[string]any{})
		mine := sendText(t, s, alice, roomID, "1", "from alice")
		his := sendText(t, s, bob, roomID, "2", "from bob")
		msSyncUntil(t, s, bob, func(r gjson.Result) bool { // the sync API has caught up
			return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + his + ")").Exists()
		})
		s.MustOK("PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/account_data/m.ignored_user_list", alice.AccessToken,
			map[string]any{"ignored_users": map[string]any{bob.UserID: map[string]any{}}})
		r := s.MustOK("GET", roomPath(roomID, "messages")+"?dir=b&limit=50", alice.AccessToken, nil)
		if !r.Get("chunk.#(event_id==" + mine + ")").Exists() {
			t.Fatalf("own message missing from /messages: %s", r)
		}
		if r.Get("chunk.#(event_id==" + his + ")").Exists() {
			t.Fatalf("ignored user's message in /messages: %s", r)
		}
		// His state events stay (his join), as the spec asks.
		if !r.Get(`chunk.#(type=="m.room.member")#.state_key`).Get(`#(=="` + bob.UserID + `")`).Exists() {
			t.Fatalf("ignored user's join left out of /messages: %s", r)
		}
		r = s.MustOK("GET", roomPath(roomID, "context", mine)+"?limit=10", alice.AccessToken, nil)
		if r.Get("events_after.#(event_id==" + his + ")").Exists() {
			t.Fatalf("ignored user's message in /context: %s", r)
		}
		// Bob still sees everything; an invite from him to alice is not shown.
		r = s.MustOK("GET", roomPath(roomID, "messages")+"?dir=b&limit=50", bob.AccessToken, nil)
		if !r.Get("chunk.#(event_id==" + his + ")").Exists() {
			t.Fatalf("bob's own message missing: %s", r)
		}
		fromBob := crCreateRoom(t, s, bob, map[string]any{"invite": []string{alice.UserID}})
		marker := crCreateRoom(t, s, alice, map[string]any{})
		r2 := msSyncUntil(t, s, alice, func(r gjson.Result) bool { return r.Get("rooms.join." + gjson.Escape(marker)).Exists() })
		if r2.Get("rooms.invite." + gjson.Escape(fromBob)).Exists() {
			t.Fatalf("invite from an ignored user in /sync: %s", r2.Get("rooms.invite").Raw)
		}
	})
}
