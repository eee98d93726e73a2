package clientapi_test

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

// mbPath is a membership endpoint of a room.
func mbPath(roomID, endpoint string) string {
	return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/" + endpoint
}

// mbJoinPath is /join/{roomIdOrAlias}.
func mbJoinPath(idOrAlias string) string {
	return "/_matrix/client/v3/join/" + url.PathEscape(idOrAlias)
}

func mbKnockPath(idOrAlias string) string {
	return "/_matrix/client/v3/knock/" + url.PathEscape(idOrAlias)
}

// mbMembership is a user's current membership of a room.
func mbMembership(t *testing.T, s *testserver.Server, roomID, userID string) string {
	t.Helper()
	m, err := s.Server.Roomserver.Membership(context.Background(), roomID, userID)
	if err != nil {
		t.Fatal(err)
	}
	return m.Membership
}

func mbJoinedRooms(t *testing.T, s *testserver.Server, u *testserver.User) []string {
	t.Helper()
	var rooms []string
	r := s.MustOK("GET", "/_matrix/client/v3/joined_rooms", u.AccessToken, nil)
	if !r.Get("joined_rooms").IsArray() {
		t.Fatalf("joined_rooms: %s", r)
	}
	for _, id := range r.Get("joined_rooms").Array() {
		rooms = append(rooms, id.String())
	}
	return rooms
}

func mbForgotten(t *testing.T, s *testserver.Server, u *testserver.User) []string {
	t.Helper()
	rooms, err := s.Server.Roomserver.ForgottenRooms(context.Background(), u.UserID)
	if err != nil {
		t.Fatal(err)
	}
	return rooms
}

func TestJoinLeaveForget(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		crSetDisplayName(t, s, bob, "Bob")
		roomID := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat", "room_alias_name": "hall"})

		r := s.MustOK("POST", mbJoinPath(roomID), bob.AccessToken, map[string]any{"reason": "hello"})
		if r.Get("room_id").String() != roomID {
			t.Fatalf("join: %s", r)
		}
		join := crState(t, s, roomID, "m.room.member", bob.UserID)
		if join.Get("membership").String() != "join" || join.Get("displayname").String() != "Bob" || join.Get("reason").String() != "hello" {
			t.Fatalf("join event: %s", join.Raw)
		}
		if rooms := mbJoinedRooms(t, s, bob); !slices.Equal(rooms, []string{roomID}) {
			t.Fatalf("joined rooms: %v", rooms)
		}
		// Joining again changes nothing.
		before, _ := s.Server.Roomserver.Membership(context.Background(), roomID, bob.UserID)
		if r := s.MustOK("POST", mbPath(roomID, "join"), bob.AccessToken, nil); r.Get("room_id").String() != roomID {
			t.Fatalf("second join: %s", r)
		}
		after, _ := s.Server.Roomserver.Membership(context.Background(), roomID, bob.UserID)
		if before.EventID != after.EventID {
			t.Fatal("joining again sent an event")
		}

		// Forgetting needs leaving first.
		s.ExpectError(400, "M_UNKNOWN", "POST", mbPath(roomID, "forget"), bob.AccessToken, map[string]any{})
		s.MustOK("POST", mbPath(roomID, "leave"), bob.AccessToken, map[string]any{"reason": "bye"})
		leave := crState(t, s, roomID, "m.room.member", bob.UserID)
		if leave.Get("membership").String() != "leave" || leave.Get("reason").String() != "bye" {
			t.Fatalf("leave event: %s", leave.Raw)
		}
		if rooms := mbJoinedRooms(t, s, bob); len(rooms) != 0 {
			t.Fatalf("joined rooms after leaving: %v", rooms)
		}
		// Leaving again changes nothing.
		s.MustOK("POST", mbPath(roomID, "leave"), bob.AccessToken, nil)
		if got := crState(t, s, roomID, "m.room.member", bob.UserID).Get("reason").String(); got != "bye" {
			t.Fatal("leaving again sent an event")
		}
		if len(mbForgotten(t, s, bob)) != 0 {
			t.Fatal("forgotten before forgetting")
		}
		s.MustOK("POST", mbPath(roomID, "forget"), bob.AccessToken, nil)
		if rooms := mbForgotten(t, s, bob); !slices.Equal(rooms, []string{roomID}) {
			t.Fatalf("forgotten rooms: %v", rooms)
		}
		if f, err := s.Server.Roomserver.RoomForgotten(context.Background(), roomID, bob.UserID); err != nil || !f {
			t.Fatalf("RoomForgotten: %v %v", f, err)
		}
		// Re-joining (by alias here) brings the room back.
		if r := s.MustOK("POST", mbJoinPath("#hall:"+s.Config.ServerName), bob.AccessToken, map[string]any{}); r.Get("room_id").String() != roomID {
			t.Fatalf("join by alias: %s", r)
		}
		if rooms := mbForgotten(t, s, bob); len(rooms) != 0 {
			t.Fatalf("still forgotten after rejoining: %v", rooms)
		}
		if f, _ := s.Server.Roomserver.RoomForgotten(context.Background(), roomID, bob.UserID); f {
			t.Fatal("RoomForgotten after rejoining")
		}

		// Carol was never in the room.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "leave"), carol.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "POST", mbPath(roomID, "forget"), carol.AccessToken, nil)

		// Unknown rooms and aliases, and bad IDs.
		unknown := "!nosuchroom:" + s.Config.ServerName
		for _, ep := range []string{"join", "leave", "forget"} {
			s.ExpectError(404, "M_NOT_FOUND", "POST", mbPath(unknown, ep), carol.AccessToken, map[string]any{})
			s.ExpectError(400, "M_INVALID_PARAM", "POST", mbPath("nosigil", ep), carol.AccessToken, map[string]any{})
		}
		s.ExpectError(404, "M_NOT_FOUND", "POST", mbJoinPath(unknown), carol.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "POST", mbJoinPath("#nosuch:"+s.Config.ServerName), carol.AccessToken, nil)
		// An alias whose server cannot be reached is not found.
		s.ExpectError(404, "M_NOT_FOUND", "POST", mbJoinPath("#room:elsewhere.example")+"?via=elsewhere.example", carol.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "POST", mbJoinPath("hall"), carol.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "POST", mbJoinPath("#nocolon"), carol.AccessToken, nil)
		s.ExpectError(400, "M_BAD_JSON", "POST", mbPath(roomID, "join"), carol.AccessToken, `{"reason": 5}`)
		s.ExpectError(401, "M_MISSING_TOKEN", "POST", mbPath(roomID, "join"), "", nil)
		s.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/joined_rooms", "", nil)
	})
}

func TestInviteKickBan(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		dave := s.Register("dave", "pw")
		crSetDisplayName(t, s, carol, "Carol")
		// Inviting needs power 50 here, which only alice has.
		roomID := crCreateRoom(t, s, alice, map[string]any{
			"preset": "private_chat", "room_version": "10", "power_level_content_override": map[string]any{"invite": 50},
		})

		// Invite-only: nobody joins uninvited.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "join"), bob.AccessToken, nil)
		s.MustOK("POST", mbPath(roomID, "invite"), alice.AccessToken, map[string]any{"user_id": bob.UserID, "reason": "welcome"})
		s.MustOK("POST", mbPath(roomID, "invite"), alice.AccessToken, map[string]any{"user_id": carol.UserID})
		invite := crState(t, s, roomID, "m.room.member", carol.UserID)
		if invite.Get("membership").String() != "invite" || invite.Get("displayname").String() != "Carol" {
			t.Fatalf("invite event: %s", invite.Raw)
		}
		if got := crState(t, s, roomID, "m.room.member", bob.UserID).Get("reason").String(); got != "welcome" {
			t.Fatalf("invite reason %q", got)
		}
		// Inviting again is fine.
		s.MustOK("POST", mbPath(roomID, "invite"), alice.AccessToken, map[string]any{"user_id": carol.UserID})
		s.MustOK("POST", mbPath(roomID, "join"), bob.AccessToken, nil)
		s.MustOK("POST", mbPath(roomID, "join"), carol.AccessToken, nil)
		// Already in the room.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "invite"), alice.AccessToken, map[string]any{"user_id": bob.UserID})
		// Without the power to invite, or from outside the room.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "invite"), bob.AccessToken, map[string]any{"user_id": dave.UserID})
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "invite"), dave.AccessToken, map[string]any{"user_id": dave.UserID})
		if got := mbMembership(t, s, roomID, dave.UserID); got != "leave" {
			t.Fatalf("refused invite left dave %q", got)
		}
		// Leaving rejects an invite.
		s.MustOK("POST", mbPath(roomID, "invite"), alice.AccessToken, map[string]any{"user_id": dave.UserID})
		s.MustOK("POST", mbPath(roomID, "leave"), dave.AccessToken, nil)
		if got := mbMembership(t, s, roomID, dave.UserID); got != "leave" {
			t.Fatalf("after rejecting the invite dave is %q", got)
		}
		// Bad invitees.
		invitePath := mbPath(roomID, "invite")
		s.ExpectError(400, "M_INVALID_PARAM", "POST", invitePath, alice.AccessToken, map[string]any{"user_id": "dave"})
		s.ExpectError(400, "M_MISSING_PARAM", "POST", invitePath, alice.AccessToken, map[string]any{})
		s.ExpectError(400, "M_BAD_JSON", "POST", invitePath, alice.AccessToken, map[string]any{"user_id": 5})
		s.ExpectError(404, "M_NOT_FOUND", "POST", invitePath, alice.AccessToken, map[string]any{"user_id": "@nobody:" + s.Config.ServerName})
		// A user of a server that cannot be reached (federationapi's
		// membership tests invite users of servers that can).
		s.ExpectError(502, "M_UNKNOWN", "POST", invitePath, alice.AccessToken, map[string]any{"user_id": "@dave:elsewhere.example"})
		s.ExpectError(400, "M_SERVER_NOT_TRUSTED", "POST", invitePath, alice.AccessToken, map[string]any{
			"id_server": "id.example", "id_access_token": "t", "medium": "email", "address": "dave@example.org"})
		s.ExpectError(404, "M_NOT_FOUND", "POST", mbPath("!nosuch:"+s.Config.ServerName, "invite"), alice.AccessToken, map[string]any{"user_id": dave.UserID})

		// Kicking needs power 50: bob has 0.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "kick"), bob.AccessToken, map[string]any{"user_id": carol.UserID})
		s.MustOK("POST", mbPath(roomID, "kick"), alice.AccessToken, map[string]any{"user_id": carol.UserID, "reason": "rude"})
		kick, _ := s.Server.Roomserver.CurrentStateEvent(context.Background(), roomID, "m.room.member", carol.UserID)
		if string(kick.SenderID()) != alice.UserID || crState(t, s, roomID, "m.room.member", carol.UserID).Get("reason").String() != "rude" ||
			mbMembership(t, s, roomID, carol.UserID) != "leave" {
			t.Fatalf("kick event: %s", kick.JSON())
		}
		// Carol is not in the room any more.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "kick"), alice.AccessToken, map[string]any{"user_id": carol.UserID})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", mbPath(roomID, "kick"), alice.AccessToken, map[string]any{"user_id": "carol"})
		s.ExpectError(400, "M_MISSING_PARAM", "POST", mbPath(roomID, "kick"), alice.AccessToken, map[string]any{"reason": "x"})
	})
}

func TestBanUnban(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	carol := s.Register("carol", "pw")
	roomID := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat"})
	s.MustOK("POST", mbPath(roomID, "join"), bob.AccessToken, nil)
	s.MustOK("POST", mbPath(roomID, "join"), carol.AccessToken, nil)

	s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "ban"), bob.AccessToken, map[string]any{"user_id": carol.UserID})
	s.MustOK("POST", mbPath(roomID, "ban"), alice.AccessToken, map[string]any{"user_id": carol.UserID, "reason": "spam"})
	ban := crState(t, s, roomID, "m.room.member", carol.UserID)
	if ban.Get("membership").String() != "ban" || ban.Get("reason").String() != "spam" {
		t.Fatalf("ban event: %s", ban.Raw)
	}
	// Banned: no joining, knocking or leaving.
	s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "join"), carol.AccessToken, nil)
	s.ExpectError(403, "M_FORBIDDEN", "POST", mbJoinPath(roomID), carol.AccessToken, nil)
	s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "leave"), carol.AccessToken, nil)
	// A banned user may forget the room.
	s.MustOK("POST", mbPath(roomID, "forget"), carol.AccessToken, nil)
	// Users who never joined can be banned too, remote ones included.
	s.MustOK("POST", mbPath(roomID, "ban"), alice.AccessToken, map[string]any{"user_id": "@eve:elsewhere.example"})

	s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "unban"), bob.AccessToken, map[string]any{"user_id": carol.UserID})
	s.MustOK("POST", mbPath(roomID, "unban"), alice.AccessToken, map[string]any{"user_id": carol.UserID, "reason": "sorry"})
	if got := mbMembership(t, s, roomID, carol.UserID); got != "leave" {
		t.Fatalf("after unban: %q", got)
	}
	s.ExpectError(403, "M_BAD_STATE", "POST", mbPath(roomID, "unban"), alice.AccessToken, map[string]any{"user_id": carol.UserID})
	s.MustOK("POST", mbPath(roomID, "join"), carol.AccessToken, nil)
	if rooms := mbForgotten(t, s, carol); len(rooms) != 0 {
		t.Fatalf("still forgotten after rejoining: %v", rooms)
	}
	s.ExpectError(400, "M_INVALID_PARAM", "POST", mbPath(roomID, "ban"), alice.AccessToken, map[string]any{"user_id": "@"})
}

func TestKnock(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		knockRoom := func(version, joinRule string) string {
			return crCreateRoom(t, s, alice, map[string]any{"room_version": version, "initial_state": []map[string]any{
				{"type": "m.room.join_rules", "content": map[string]any{"join_rule": joinRule}},
			}})
		}

		roomID := knockRoom("10", "knock")
		r := s.MustOK("POST", mbKnockPath(roomID), bob.AccessToken, map[string]any{"reason": "let me in"})
		if r.Get("room_id").String() != roomID {
			t.Fatalf("knock: %s", r)
		}
		knock := crState(t, s, roomID, "m.room.member", bob.UserID)
		if knock.Get("membership").String() != "knock" || knock.Get("reason").String() != "let me in" {
			t.Fatalf("knock event: %s", knock.Raw)
		}
		// Knocking does not let bob in; an invite does.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "join"), bob.AccessToken, nil)
		s.MustOK("POST", mbPath(roomID, "invite"), alice.AccessToken, map[string]any{"user_id": bob.UserID})
		s.MustOK("POST", mbPath(roomID, "join"), bob.AccessToken, nil)
		// Members cannot knock.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbKnockPath(roomID), bob.AccessToken, nil)

		// A knock can be retracted by leaving, and rejected by a kick.
		roomID = knockRoom("12", "knock_restricted")
		s.MustOK("POST", mbKnockPath(roomID), bob.AccessToken, nil)
		s.MustOK("POST", mbPath(roomID, "leave"), bob.AccessToken, nil)
		s.MustOK("POST", mbKnockPath(roomID), bob.AccessToken, nil)
		s.MustOK("POST", mbPath(roomID, "kick"), alice.AccessToken, map[string]any{"user_id": bob.UserID})
		if got := mbMembership(t, s, roomID, bob.UserID); got != "leave" {
			t.Fatalf("after rejecting the knock: %q", got)
		}

		// Knocking by alias.
		aliasRoom := crCreateRoom(t, s, alice, map[string]any{"room_version": "7", "room_alias_name": "door",
			"initial_state": []map[string]any{{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "knock"}}}})
		if r := s.MustOK("POST", mbKnockPath("#door:"+s.Config.ServerName), bob.AccessToken, nil); r.Get("room_id").String() != aliasRoom {
			t.Fatalf("knock by alias: %s", r)
		}

		// Join rules and room versions that do not allow knocking.
		for _, c := range []struct{ version, rule string }{
			{"10", "public"}, {"10", "invite"}, {"6", "knock"}, {"9", "knock_restricted"},
		} {
			s.ExpectError(403, "M_FORBIDDEN", "POST", mbKnockPath(knockRoom(c.version, c.rule)), bob.AccessToken, nil)
		}
		// Banned users cannot knock.
		roomID = knockRoom("10", "knock")
		s.MustOK("POST", mbPath(roomID, "ban"), alice.AccessToken, map[string]any{"user_id": bob.UserID})
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbKnockPath(roomID), bob.AccessToken, nil)

		s.ExpectError(404, "M_NOT_FOUND", "POST", mbKnockPath("!nosuch:"+s.Config.ServerName), bob.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "POST", mbKnockPath("#nosuch:"+s.Config.ServerName), bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "POST", mbKnockPath("nosigil"), bob.AccessToken, nil)
	})
}

func TestRestrictedJoin(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		space := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat"})
		restricted := func(version, rule string) string {
			return crCreateRoom(t, s, alice, map[string]any{"room_version": version, "initial_state": []map[string]any{
				{"type": "m.room.join_rules", "content": map[string]any{"join_rule": rule, "allow": []map[string]any{
					{"type": "m.room_membership", "room_id": "!unknown:" + s.Config.ServerName},
					{"type": "m.room_membership", "room_id": space},
				}}},
			}})
		}
		for _, c := range []struct{ version, rule string }{{"8", "restricted"}, {"10", "knock_restricted"}, {"12", "restricted"}} {
			roomID := restricted(c.version, c.rule)
			// Bob is in none of the allowed rooms.
			s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "join"), bob.AccessToken, nil)
			s.MustOK("POST", mbPath(space, "join"), bob.AccessToken, nil)
			s.MustOK("POST", mbPath(roomID, "join"), bob.AccessToken, nil)
			join := crState(t, s, roomID, "m.room.member", bob.UserID)
			if join.Get("membership").String() != "join" || join.Get("join_authorised_via_users_server").String() != alice.UserID {
				t.Fatalf("v%s join: %s", c.version, join.Raw)
			}
			// Invited users need no allow condition, nor an authoriser.
			s.MustOK("POST", mbPath(roomID, "invite"), alice.AccessToken, map[string]any{"user_id": carol.UserID})
			s.MustOK("POST", mbPath(roomID, "join"), carol.AccessToken, nil)
			if crState(t, s, roomID, "m.room.member", carol.UserID).Get("join_authorised_via_users_server").Exists() {
				t.Fatal("invited join named an authoriser")
			}
			s.MustOK("POST", mbPath(space, "leave"), bob.AccessToken, nil)
		}

		// Before version 8 "restricted" is not a join rule the auth rules
		// know: such rooms are invite-only.
		s.MustOK("POST", mbPath(space, "join"), bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(restricted("7", "restricted"), "join"), bob.AccessToken, nil)
		// knock_restricted is only known from version 10.
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(restricted("9", "knock_restricted"), "join"), bob.AccessToken, nil)

		// The authoriser must be able to invite: with invite at 100 and
		// alice demoted to 50 there is nobody (version 10, so that alice's
		// power is not infinite).
		roomID := crCreateRoom(t, s, alice, map[string]any{"room_version": "10", "initial_state": []map[string]any{
			{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "restricted",
				"allow": []map[string]any{{"type": "m.room_membership", "room_id": space}}}},
			{"type": "m.room.power_levels", "content": map[string]any{"invite": 100, "users": map[string]int{alice.UserID: 50}}},
		}})
		s.ExpectError(403, "M_FORBIDDEN", "POST", mbPath(roomID, "join"), bob.AccessToken, nil)
	})
}

func TestGuestMembership(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	guest := &testserver.User{UserID: g.Get("user_id").String(), AccessToken: g.Get("access_token").String()}

	// public_chat forbids guests.
	closed := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat"})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", mbPath(closed, "join"), guest.AccessToken, nil)
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", mbJoinPath(closed), guest.AccessToken, nil)
	// A public room that lets guests join.
	open := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat", "initial_state": []map[string]any{
		{"type": "m.room.guest_access", "content": map[string]any{"guest_access": "can_join"}},
	}})
	s.MustOK("POST", mbJoinPath(open), guest.AccessToken, nil)
	if rooms := mbJoinedRooms(t, s, guest); !slices.Equal(rooms, []string{open}) {
		t.Fatalf("guest's joined rooms: %v", rooms)
	}
	// Guests may not moderate, invite, knock or forget.
	for _, ep := range []string{"invite", "kick", "ban", "unban"} {
		s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", mbPath(open, ep), guest.AccessToken, map[string]any{"user_id": bob.UserID})
	}
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", mbKnockPath(open), guest.AccessToken, nil)
	s.MustOK("POST", mbPath(open, "leave"), guest.AccessToken, nil)
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", mbPath(open, "forget"), guest.AccessToken, nil)
	if rooms := mbJoinedRooms(t, s, guest); len(rooms) != 0 {
		t.Fatalf("guest's joined rooms after leaving: %v", rooms)
	}
}

// TestJoinWithCustomContent checks that extra keys of a join body reach
// the member event, while the keys the server sets cannot be overridden,
// and that /joined_members always has both profile keys.
func TestJoinWithCustomContent(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "password")
	bob := s.Register("bob", "password")
	roomID := s.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").String()
	s.MustOK("POST", mbJoinPath(roomID), bob.AccessToken, map[string]any{"foo": "bar", "membership": "leave", "reason": "hi",
		"join_authorised_via_users_server": alice.UserID})
	ev := s.MustOK("GET", mbPath(roomID, "state/m.room.member/"+url.PathEscape(bob.UserID)), bob.AccessToken, nil)
	if ev.Get("foo").String() != "bar" || ev.Get("membership").String() != "join" || ev.Get("reason").String() != "hi" ||
		ev.Get("join_authorised_via_users_server").Exists() {
		t.Fatalf("member content: %s", ev)
	}
	s.ExpectError(400, "M_BAD_JSON", "POST", mbJoinPath(roomID), bob.AccessToken, map[string]any{"reason": 5})

	joined := s.MustOK("GET", mbPath(roomID, "joined_members"), alice.AccessToken, nil)
	me := joined.Get("joined." + strings.ReplaceAll(alice.UserID, ".", `\.`))
	if !me.Get("display_name").Exists() || !me.Get("avatar_url").Exists() || me.Get("avatar_url").Type != gjson.Null {
		t.Fatalf("joined_members entry: %s", joined)
	}
}
