package clientapi_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestServerNotices(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		admin := newAdmin(t, s, "admin")
		const path = "/_plexus/admin/v1/server_notice"
		notice := func(body string) map[string]any {
			return map[string]any{"user_id": alice.UserID, "content": map[string]any{"body": body}}
		}
		s.ExpectError(403, "M_FORBIDDEN", "POST", path, alice.AccessToken, notice("not from alice"))
		r := s.MustOK("POST", path, admin.AccessToken, notice("Maintenance tonight"))
		roomID, first := r.Get("room_id").String(), r.Get("event_id").String()

		// Alice is invited to a room tagged m.server_notice.
		sync := msSyncUntil(t, s, alice, func(r gjson.Result) bool {
			return r.Get("rooms.invite." + gjson.Escape(roomID)).Exists()
		})
		inviteState := sync.Get("rooms.invite." + gjson.Escape(roomID) + ".invite_state.events")
		if inviteState.Get(`#(type=="m.room.name").content.name`).String() != "Server Notices" {
			t.Fatalf("invite state: %s", inviteState.Raw)
		}
		tags := s.MustOK("GET", tagsPath(alice, roomID), alice.AccessToken, nil)
		if !tags.Get("tags.m\\.server_notice").Exists() {
			t.Fatalf("notice room not tagged: %s", tags)
		}
		// The invite cannot be rejected; once joined she sees the notice
		// and cannot write.
		s.ExpectError(403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM", "POST", roomPath(roomID, "leave"), alice.AccessToken, map[string]any{})
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), alice.AccessToken, map[string]any{})
		second := s.MustOK("POST", path, admin.AccessToken, notice("Done")).Get("event_id").String()
		if got := s.MustOK("POST", path, admin.AccessToken, notice("Same room")).Get("room_id").String(); got != roomID {
			t.Fatalf("a second room %s for notices (first %s)", got, roomID)
		}
		sync = msSyncUntil(t, s, alice, func(r gjson.Result) bool {
			return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + second + ")").Exists()
		})
		msgs := s.MustOK("GET", roomPath(roomID, "messages")+"?dir=b&limit=50", alice.AccessToken, nil)
		ev := msgs.Get("chunk.#(event_id==" + first + ")")
		if ev.Get("content.msgtype").String() != "m.server_notice" || ev.Get("content.body").String() != "Maintenance tonight" ||
			ev.Get("sender").String() != "@_server:"+s.ServerName() {
			t.Fatalf("notice: %s", msgs)
		}
		s.ExpectError(403, "M_FORBIDDEN", "PUT", roomPath(roomID, "send", "m.room.message", "1"), alice.AccessToken,
			map[string]any{"msgtype": "m.text", "body": "reply"})
		// Leaving once joined is allowed; the next notice invites her back.
		s.MustOK("POST", roomPath(roomID, "leave"), alice.AccessToken, map[string]any{})
		if got := s.MustOK("POST", path, admin.AccessToken, notice("Back")).Get("room_id").String(); got != roomID {
			t.Fatalf("a new room %s after leaving %s", got, roomID)
		}
		msSyncUntil(t, s, alice, func(r gjson.Result) bool { return r.Get("rooms.invite." + gjson.Escape(roomID)).Exists() })
		// Nobody logs in as the system user.
		s.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "_server"}, "password": ""})
		// Nobody registers the system user's name before the first notice makes it.
		s.ExpectError(400, "M_USER_IN_USE", "GET", "/_matrix/client/v3/register/available?username=_server", "", nil)

		// Synapse's admin path: another msgtype becomes m.server_notice, and
		// a repeated transaction ID sends nothing new.
		synapsePath := "/_synapse/admin/v1/send_server_notice"
		synNotice := map[string]any{"user_id": alice.UserID, "content": map[string]any{"body": "again", "msgtype": "m.text"}}
		s.ExpectError(403, "M_FORBIDDEN", "POST", synapsePath, alice.AccessToken, synNotice)
		firstNotice := s.MustOK("PUT", synapsePath+"/t1", admin.AccessToken, synNotice).Get("event_id").String()
		if again := s.MustOK("PUT", synapsePath+"/t1", admin.AccessToken, synNotice).Get("event_id").String(); firstNotice == "" || again != firstNotice {
			t.Fatalf("repeated transaction: %q then %q", firstNotice, again)
		}
		if other := s.MustOK("POST", synapsePath, admin.AccessToken, synNotice).Get("event_id").String(); other == firstNotice {
			t.Fatal("a notice without a transaction ID repeated the last one")
		}
		sent, err := s.Server.Roomserver.Event(context.Background(), firstNotice)
		if err != nil || gjson.GetBytes(sent.Content(), "msgtype").String() != "m.server_notice" {
			t.Fatalf("notice sent as %v (%v)", sent, err)
		}

		// Bad requests.
		s.ExpectError(400, "M_MISSING_PARAM", "POST", path, admin.AccessToken, map[string]any{"user_id": alice.UserID})
		s.ExpectError(400, "M_BAD_JSON", "POST", path, admin.AccessToken, map[string]any{"user_id": alice.UserID, "content": map[string]any{}})
		s.ExpectError(404, "M_NOT_FOUND", "POST", path, admin.AccessToken, map[string]any{"user_id": "@ghost:" + s.ServerName(),
			"content": map[string]any{"body": "x"}})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", path, admin.AccessToken, map[string]any{"user_id": "@bob:elsewhere.example",
			"content": map[string]any{"body": "x"}})
	})
}
