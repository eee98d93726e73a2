package federationapi_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// A knock refused and an invite withdrawn by the room reach the server of
// the user, which is not in the room: it takes the leave out of band, as
// it took the knock and the invite, and the user sees it and may knock
// again.
func TestRefusedKnockAndWithdrawnInviteReachTheUsersServer(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	carol := b.Register("carol", "password")
	room := mtCreateRoom(t, a, alice, map[string]any{"room_version": "10",
		"initial_state": []map[string]any{{"type": "m.room.join_rules", "state_key": "", "content": map[string]string{"join_rule": "knock"}}}})
	knock := func() {
		t.Helper()
		b.MustOK("POST", "/_matrix/client/v3/knock/"+url.PathEscape(room)+"?via="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{})
	}
	waitMembership := func(s *testserver.Server, userID, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for mtMembership(t, s, room, userID) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s never saw %s as %s: %s", s.ServerName(), userID, want, mtMembership(t, s, room, userID))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	knock()
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/kick", alice.AccessToken, map[string]any{"user_id": bob.UserID, "reason": "not now"})
	waitMembership(b, bob.UserID, "leave")
	// B, not in the room, may read the event about its user and its auth
	// chain, though none of the room's history.
	kickID, err := a.Server.Roomserver.Membership(context.Background(), room, bob.UserID)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{
		"/_matrix/federation/v1/event/" + url.PathEscape(kickID.EventID),
		"/_matrix/federation/v1/event_auth/" + url.PathEscape(room) + "/" + url.PathEscape(kickID.EventID),
	} {
		resp, err := b.Server.Federation.DoSigned(context.Background(), "GET", spec.ServerName(a.ServerName()), path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	create, err := a.Server.Roomserver.CurrentStateEvent(context.Background(), room, "m.room.create", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.Server.Federation.DoSigned(context.Background(), "GET", spec.ServerName(a.ServerName()), "/_matrix/federation/v1/event/"+url.PathEscape(create.EventID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("the room's create event: %d, want 403", resp.StatusCode)
	}
	mtWaitSync(t, b, bob, "the end of the knock", func(r gjson.Result) bool {
		return !r.Get("rooms.knock." + gjson.Escape(room)).Exists()
	})
	knock()
	waitMembership(a, bob.UserID, "knock")

	// An invite: only its inviter withdraws it this way. Amy, who did not
	// invite carol, kicks her first: B keeps the invite.
	amy := a.Register("amy", "password")
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite", alice.AccessToken, map[string]any{"user_id": amy.UserID})
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/join", amy.AccessToken, map[string]any{})
	a.MustOK("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.power_levels/", alice.AccessToken,
		map[string]any{"users": map[string]int{alice.UserID: 100, amy.UserID: 50}})
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite", alice.AccessToken, map[string]any{"user_id": carol.UserID})
	waitMembership(b, carol.UserID, "invite")
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/kick", amy.AccessToken, map[string]any{"user_id": carol.UserID})
	waitMembership(a, carol.UserID, "leave")
	for range 40 { // A sends amy's kick at once; B must not take it
		if m := mtMembership(t, b, room, carol.UserID); m != "invite" {
			t.Fatalf("B took a kick by someone other than the inviter: %s", m)
		}
		time.Sleep(25 * time.Millisecond)
	}
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite", alice.AccessToken, map[string]any{"user_id": carol.UserID})
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/kick", alice.AccessToken, map[string]any{"user_id": carol.UserID})
	waitMembership(b, carol.UserID, "leave")
}
