package federationapi_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// Membership handshakes between servers: joins (by room ID and alias,
// restricted), leaves, invites accepted and rejected (with the inviting
// server down), knocks, and the checks on hand-built requests.

// mtSync is the user's initial /sync.
func mtSync(s *testserver.Server, u *testserver.User) gjson.Result {
	return s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0", u.AccessToken, nil).JSON()
}

// mtWaitSync polls the user's /sync until cond holds (the sync API takes
// the room stream asynchronously).
func mtWaitSync(t *testing.T, s *testserver.Server, u *testserver.User, what string, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := mtSync(s, u)
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never shows in /sync: %s", what, r.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mtEvents finds the events of a type (and state key) in a list.
func mtEvent(list gjson.Result, evType, stateKey string) gjson.Result {
	for _, ev := range list.Array() {
		if ev.Get("type").String() == evType && ev.Get("state_key").String() == stateKey {
			return ev
		}
	}
	return gjson.Result{}
}

// mtRoomState is a joined room's state in a sync: the state section and
// the timeline's state events.
func mtRoomState(r gjson.Result, roomID string) []gjson.Result {
	room := r.Get("rooms.join." + gjson.Escape(roomID))
	var out []gjson.Result
	for _, section := range []string{"state.events", "timeline.events"} {
		for _, ev := range room.Get(section).Array() {
			if ev.Get("state_key").Exists() {
				out = append(out, ev)
			}
		}
	}
	return out
}

func mtHasState(r gjson.Result, roomID, evType, stateKey string) gjson.Result {
	for _, ev := range mtRoomState(r, roomID) {
		if ev.Get("type").String() == evType && ev.Get("state_key").String() == stateKey {
			return ev
		}
	}
	return gjson.Result{}
}

func mtMembership(t *testing.T, s *testserver.Server, roomID, userID string) string {
	t.Helper()
	m, err := s.Server.Roomserver.Membership(context.Background(), roomID, userID)
	if err != nil {
		t.Fatalf("membership of %s in %s on %s: %v", userID, roomID, s.ServerName(), err)
	}
	return m.Membership
}

func mtCreateRoom(t *testing.T, s *testserver.Server, u *testserver.User, body map[string]any) string {
	t.Helper()
	return s.MustOK("POST", "/_matrix/client/v3/createRoom", u.AccessToken, body).Get("room_id").String()
}

func mtJoinedRooms(s *testserver.Server, u *testserver.User) []string {
	var out []string
	for _, r := range s.MustOK("GET", "/_matrix/client/v3/joined_rooms", u.AccessToken, nil).Get("joined_rooms").Array() {
		out = append(out, r.String())
	}
	return out
}

func TestJoinRemoteRoomByIDAndAliasThenLeave(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	carl := b.Register("carl", "password")
	roomID := mtCreateRoom(t, a, alice, map[string]any{"preset": "public_chat", "name": "Public", "room_alias_name": "pub"})
	alias := "#pub:" + a.ServerName()

	// By room ID, naming the server to join through.
	r := b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{})
	if r.Get("room_id").String() != roomID {
		t.Fatalf("join: %s", r)
	}
	if !slices.Contains(mtJoinedRooms(b, bob), roomID) {
		t.Fatal("bob's server does not list the room as joined")
	}
	if m := mtMembership(t, a, roomID, bob.UserID); m != "join" {
		t.Fatalf("alice's server sees bob as %q", m)
	}
	mtWaitSync(t, b, bob, "the joined room with its state", func(r gjson.Result) bool {
		return mtHasState(r, roomID, "m.room.name", "").Get("content.name").String() == "Public" &&
			mtHasState(r, roomID, "m.room.create", "").Exists() &&
			mtHasState(r, roomID, "m.room.member", alice.UserID).Get("content.membership").String() == "join" &&
			mtHasState(r, roomID, "m.room.member", bob.UserID).Get("content.membership").String() == "join"
	})

	// The room is usable on bob's server: he can speak in it.
	b.MustOK("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/t1", bob.AccessToken,
		map[string]any{"msgtype": "m.text", "body": "hello from b"})

	// Bob leaves: his server is in the room, so the leave is an event of
	// its own, which the sender takes to alice's server.
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", bob.AccessToken, map[string]any{})
	if m := mtMembership(t, b, roomID, bob.UserID); m != "leave" {
		t.Fatalf("bob's membership after leaving: %q", m)
	}
	mtWaitSync(t, b, bob, "the left room", func(r gjson.Result) bool {
		return !r.Get("rooms.join." + gjson.Escape(roomID)).Exists()
	})

	// By alias, through the alias's server: bob's server has a stale
	// copy of the room now, and joins at the state alice's server gives.
	r = b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(alias), bob.AccessToken, map[string]any{})
	if r.Get("room_id").String() != roomID {
		t.Fatalf("join by alias: %s", r)
	}
	if m := mtMembership(t, a, roomID, bob.UserID); m != "join" {
		t.Fatalf("alice's server sees bob as %q after the rejoin", m)
	}
	// With bob in, carl joins through his own server directly.
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/join", carl.AccessToken, map[string]any{})
	if m := mtMembership(t, b, roomID, carl.UserID); m != "join" {
		t.Fatalf("carl: %q", m)
	}

	// Unknown rooms and aliases.
	b.ExpectError(404, "M_NOT_FOUND", "POST", "/_matrix/client/v3/join/"+url.PathEscape("#nope:"+a.ServerName()), bob.AccessToken, map[string]any{})
	b.ExpectError(404, "M_NOT_FOUND", "POST", "/_matrix/client/v3/join/"+url.PathEscape("!unknown:"+a.ServerName()), bob.AccessToken, map[string]any{})
	b.ExpectError(404, "M_NOT_FOUND", "POST", "/_matrix/client/v3/join/"+url.PathEscape("!noserver"), bob.AccessToken, map[string]any{})
}

// TestJoinOldRoomVersions joins rooms whose events have the older formats
// (event IDs chosen by the server, event references in prev_events).
func TestJoinOldRoomVersions(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	for _, version := range []string{"1", "3", "6"} {
		roomID := mtCreateRoom(t, a, alice, map[string]any{"preset": "public_chat", "room_version": version})
		b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), bob.AccessToken, map[string]any{})
		if m := mtMembership(t, a, roomID, bob.UserID); m != "join" {
			t.Fatalf("v%s: alice's server sees bob as %q", version, m)
		}
		if m := mtMembership(t, b, roomID, bob.UserID); m != "join" {
			t.Fatalf("v%s: bob's server sees bob as %q", version, m)
		}
	}
}

func TestInviteRemoteUsersAcceptAndRejectWithInviterDown(t *testing.T) {
	servers := testserver.NewFederated(t, 3)
	a, b, c := servers[0], servers[1], servers[2]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	carol := c.Register("carol", "password")

	// Bob is invited by createRoom, carol by /invite.
	roomID := mtCreateRoom(t, a, alice, map[string]any{"preset": "private_chat", "name": "Secret", "invite": []string{bob.UserID}})
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", alice.AccessToken, map[string]any{"user_id": carol.UserID})
	for _, who := range []struct {
		s *testserver.Server
		u *testserver.User
	}{{b, bob}, {c, carol}} {
		if m := mtMembership(t, a, roomID, who.u.UserID); m != "invite" {
			t.Fatalf("alice's server: %s is %q", who.u.UserID, m)
		}
		r := mtWaitSync(t, who.s, who.u, "the invite", func(r gjson.Result) bool {
			return r.Get("rooms.invite." + gjson.Escape(roomID)).Exists()
		})
		state := r.Get("rooms.invite." + gjson.Escape(roomID) + ".invite_state.events")
		if mtEvent(state, "m.room.name", "").Get("content.name").String() != "Secret" || !mtEvent(state, "m.room.create", "").Exists() ||
			mtEvent(state, "m.room.member", who.u.UserID).Get("sender").String() != alice.UserID {
			t.Fatalf("%s's invite_state: %s", who.u.UserID, state.Raw)
		}
	}
	// An invite of a user that does not exist is refused by their server.
	a.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", alice.AccessToken,
		map[string]any{"user_id": "@nobody:" + c.ServerName()})

	// Carol accepts: her server joins through the inviter's.
	c.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/join", carol.AccessToken, map[string]any{})
	if m := mtMembership(t, a, roomID, carol.UserID); m != "join" {
		t.Fatalf("alice's server sees carol as %q", m)
	}
	mtWaitSync(t, c, carol, "the accepted invite's room", func(r gjson.Result) bool {
		return mtHasState(r, roomID, "m.room.name", "").Get("content.name").String() == "Secret" &&
			!r.Get("rooms.invite."+gjson.Escape(roomID)).Exists()
	})

	// Bob rejects while alice's server is down: the leave is kept on his
	// server alone, and he is out of the room there.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Server.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", bob.AccessToken, map[string]any{})
	if m := mtMembership(t, b, roomID, bob.UserID); m != "leave" {
		t.Fatalf("bob after rejecting: %q", m)
	}
	mtWaitSync(t, b, bob, "the rejected invite", func(r gjson.Result) bool {
		return !r.Get("rooms.invite." + gjson.Escape(roomID)).Exists()
	})
	// Rejecting again changes nothing.
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", bob.AccessToken, map[string]any{})
}

func TestRejectRemoteInviteThroughInviter(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	roomID := mtCreateRoom(t, a, alice, map[string]any{"preset": "private_chat", "room_version": "10"})
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", alice.AccessToken, map[string]any{"user_id": bob.UserID})
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", bob.AccessToken, map[string]any{"reason": "no thanks"})
	// make_leave and send_leave: alice's server has the rejection.
	if m := mtMembership(t, a, roomID, bob.UserID); m != "leave" {
		t.Fatalf("alice's server sees bob as %q", m)
	}
	if m := mtMembership(t, b, roomID, bob.UserID); m != "leave" {
		t.Fatalf("bob's server sees bob as %q", m)
	}
}

func TestKnockOnRemoteRoom(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	knockRoom := mtCreateRoom(t, a, alice, map[string]any{"room_version": "10", "name": "Knock here",
		"initial_state": []map[string]any{{"type": "m.room.join_rules", "state_key": "", "content": map[string]string{"join_rule": "knock"}}}})
	closed := mtCreateRoom(t, a, alice, map[string]any{"room_version": "10", "preset": "private_chat"})

	b.MustOK("POST", "/_matrix/client/v3/knock/"+url.PathEscape(knockRoom)+"?via="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{"reason": "let me in"})
	if m := mtMembership(t, a, knockRoom, bob.UserID); m != "knock" {
		t.Fatalf("alice's server sees bob as %q", m)
	}
	r := mtWaitSync(t, b, bob, "the knock", func(r gjson.Result) bool {
		return r.Get("rooms.knock." + gjson.Escape(knockRoom)).Exists()
	})
	state := r.Get("rooms.knock." + gjson.Escape(knockRoom) + ".knock_state.events")
	if mtEvent(state, "m.room.name", "").Get("content.name").String() != "Knock here" || !mtEvent(state, "m.room.create", "").Exists() ||
		mtEvent(state, "m.room.member", bob.UserID).Get("content.membership").String() != "knock" {
		t.Fatalf("knock_state: %s", state.Raw)
	}
	// Alice lets him in with an invite, which reaches bob's server.
	a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(knockRoom)+"/invite", alice.AccessToken, map[string]any{"user_id": bob.UserID})
	if m := mtMembership(t, b, knockRoom, bob.UserID); m != "invite" {
		t.Fatalf("bob's server after the invite: %q", m)
	}

	// A room whose join rules do not allow knocking.
	b.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/knock/"+url.PathEscape(closed)+"?via="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{})
	if m := mtMembership(t, a, closed, bob.UserID); m != "leave" {
		t.Fatalf("a refused knock left bob %q", m)
	}
}

func TestRestrictedJoinAuthorisedByResidentServer(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	carl := b.Register("carl", "password")
	space := mtCreateRoom(t, a, alice, map[string]any{"preset": "public_chat", "room_version": "10"})
	restricted := mtCreateRoom(t, a, alice, map[string]any{"room_version": "10", "initial_state": []map[string]any{{
		"type": "m.room.join_rules", "state_key": "",
		"content": map[string]any{"join_rule": "restricted", "allow": []map[string]string{{"type": "m.room_membership", "room_id": space}}},
	}}})
	via := "?via=" + url.QueryEscape(a.ServerName())

	// Carl is in no allowed room.
	b.ExpectError(403, "M_FORBIDDEN", "POST", "/_matrix/client/v3/join/"+url.PathEscape(restricted)+via, carl.AccessToken, map[string]any{})

	b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(space)+via, bob.AccessToken, map[string]any{})
	b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(restricted)+via, bob.AccessToken, map[string]any{})
	for _, s := range []*testserver.Server{a, b} {
		m, err := s.Server.Roomserver.Membership(context.Background(), restricted, bob.UserID)
		if err != nil || m.Membership != "join" {
			t.Fatalf("%s: %+v %v", s.ServerName(), m, err)
		}
		ev, err := s.Server.Roomserver.Event(context.Background(), m.EventID)
		if err != nil {
			t.Fatal(err)
		}
		if got := gjson.GetBytes(ev.Content(), "join_authorised_via_users_server").String(); got != alice.UserID {
			t.Fatalf("%s: authorised via %q", s.ServerName(), got)
		}
		verifySignedBy(t, mtRedacted(t, ev.PDU), a.ServerName(), a.Server.Key.ID, publicKey(a))
	}

	// A profile change (join to join) naming an authoriser, as clients
	// may copy the key over: the key means nothing there, and A, which
	// checks the named server's signature on joins, still takes it. So it
	// takes bob's leave after it.
	b.MustOK("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(restricted)+"/state/m.room.member/"+url.PathEscape(bob.UserID), bob.AccessToken,
		map[string]any{"membership": "join", "displayname": "Bobby", "join_authorised_via_users_server": "unused"})
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(restricted)+"/leave", bob.AccessToken, map[string]any{})
	deadline := time.Now().Add(10 * time.Second)
	for mtMembership(t, a, restricted, bob.UserID) != "leave" {
		if time.Now().After(deadline) {
			t.Fatalf("A never took bob's leave after his profile change")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mtRedacted(t *testing.T, ev gomatrixserverlib.PDU) []byte {
	t.Helper()
	js, err := gomatrixserverlib.MustGetRoomVersion(ev.Version()).RedactEventJSON(ev.JSON())
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestMembershipHandshakeChecks sends hand-built requests to the inbound
// endpoints: wrong room versions, users of other servers, forged and
// mismatched events.
func TestMembershipHandshakeChecks(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password")
	roomID := mtCreateRoom(t, a, alice, map[string]any{"preset": "public_chat"}) // version 12
	ask := func(method, path string, content any) (int, gjson.Result) {
		t.Helper()
		resp, err := b.Server.Federation.DoSigned(ctx(t), method, spec.ServerName(a.ServerName()), path, content)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, gjson.ParseBytes(data)
	}
	expect := func(status int, errcode string, method, path string, content any) gjson.Result {
		t.Helper()
		got, body := ask(method, path, content)
		if got != status || body.Get("errcode").String() != errcode {
			t.Fatalf("%s %s: %d %s, want %d %s", method, path, got, body.Raw, status, errcode)
		}
		return body
	}
	mallory := "@mallory:" + b.ServerName()
	makeJoin := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/"

	body := expect(400, "M_INCOMPATIBLE_ROOM_VERSION", "GET", makeJoin+url.PathEscape(mallory)+"?ver=1&ver=2", nil)
	if body.Get("room_version").String() != "12" {
		t.Fatalf("room_version: %s", body.Raw)
	}
	expect(400, "M_INCOMPATIBLE_ROOM_VERSION", "GET", makeJoin+url.PathEscape(mallory), nil) // no ver: version 1
	expect(403, "M_FORBIDDEN", "GET", makeJoin+url.PathEscape("@someone:elsewhere.example")+"?ver=12", nil)
	expect(404, "M_NOT_FOUND", "GET", "/_matrix/federation/v1/make_join/"+url.PathEscape("!nope:"+a.ServerName())+"/"+url.PathEscape(mallory)+"?ver=12", nil)

	status, tmpl := ask("GET", makeJoin+url.PathEscape(mallory)+"?ver=12", nil)
	if status != 200 || tmpl.Get("room_version").String() != "12" || tmpl.Get("event.content.membership").String() != "join" ||
		tmpl.Get("event.state_key").String() != mallory {
		t.Fatalf("make_join: %d %s", status, tmpl.Raw)
	}
	build := func(sender, origin string, key ed25519.PrivateKey) gomatrixserverlib.PDU {
		t.Helper()
		var proto gomatrixserverlib.ProtoEvent
		if err := json.Unmarshal([]byte(tmpl.Get("event").Raw), &proto); err != nil {
			t.Fatal(err)
		}
		proto.SenderID, proto.StateKey = sender, &sender
		ev, err := gomatrixserverlib.MustGetRoomVersion("12").NewEventBuilderFromProtoEvent(&proto).
			Build(time.Now(), spec.ServerName(origin), gomatrixserverlib.KeyID(b.Server.Key.ID), key)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	sendJoin := func(ev gomatrixserverlib.PDU) string {
		return "/_matrix/federation/v2/send_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(ev.EventID())
	}

	// Signed with a key that is not b's.
	_, forgedKey, _ := ed25519.GenerateKey(nil)
	forged := build(mallory, b.ServerName(), forgedKey)
	expect(400, "M_INVALID_PARAM", "PUT", sendJoin(forged), json.RawMessage(forged.JSON()))
	// A join of another server's user.
	other := build("@victim:elsewhere.example", b.ServerName(), b.Server.Key.PrivateKey)
	expect(400, "M_INVALID_PARAM", "PUT", sendJoin(other), json.RawMessage(other.JSON()))
	// The path's event ID must be the event's.
	good := build(mallory, b.ServerName(), b.Server.Key.PrivateKey)
	expect(400, "M_INVALID_PARAM", "PUT", sendJoin(forged), json.RawMessage(good.JSON()))
	// Content tampered with after signing: the hash no longer matches.
	var obj map[string]any
	_ = json.Unmarshal(good.JSON(), &obj)
	obj["content"] = map[string]any{"membership": "join", "displayname": "changed"}
	tampered, _ := json.Marshal(obj)
	expect(400, "M_INVALID_PARAM", "PUT", sendJoin(good), json.RawMessage(tampered))
	for _, ev := range []gomatrixserverlib.PDU{forged, other} {
		if m := mtMembership(t, a, roomID, string(ev.SenderID())); m == "join" {
			t.Fatalf("a refused join got through: %s", ev.SenderID())
		}
	}

	// The real thing, over v2 and v1 (which wraps the answer).
	status, resp := ask("PUT", sendJoin(good), json.RawMessage(good.JSON()))
	if status != 200 || resp.Get("origin").String() != a.ServerName() || resp.Get("members_omitted").Bool() ||
		len(resp.Get("state").Array()) < 5 || len(resp.Get("auth_chain").Array()) < 3 || resp.Get("event.signatures."+gjson.Escape(a.ServerName())).Raw == "" ||
		!slices.ContainsFunc(resp.Get("servers_in_room").Array(), func(r gjson.Result) bool { return r.String() == a.ServerName() }) {
		t.Fatalf("send_join: %d %s", status, resp.Raw)
	}
	if m := mtMembership(t, a, roomID, mallory); m != "join" {
		t.Fatalf("mallory: %q", m)
	}
	status, resp = ask("PUT", "/_matrix/federation/v1/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(good.EventID()), json.RawMessage(good.JSON()))
	if status != 200 || resp.Get("0").Int() != 200 || !resp.Get("1.state").IsArray() {
		t.Fatalf("send_join v1: %d %s", status, resp.Raw)
	}

	// make_leave and make_knock speak for the requesting server's users only.
	expect(403, "M_FORBIDDEN", "GET", "/_matrix/federation/v1/make_leave/"+url.PathEscape(roomID)+"/"+url.PathEscape(alice.UserID), nil)
	expect(400, "M_INCOMPATIBLE_ROOM_VERSION", "GET", "/_matrix/federation/v1/make_knock/"+url.PathEscape(roomID)+"/"+url.PathEscape(mallory)+"?ver=7", nil)
	// Knocking on a public room is refused by the auth rules.
	expect(403, "M_FORBIDDEN", "GET", "/_matrix/federation/v1/make_knock/"+url.PathEscape(roomID)+"/"+url.PathEscape("@eve:"+b.ServerName())+"?ver=12", nil)

	// Invites: for users of the receiving server, about an existing user,
	// in a supported version.
	inviteOf := func(target string) gomatrixserverlib.PDU {
		t.Helper()
		raw, _ := json.Marshal(map[string]string{"membership": "invite"})
		proto := gomatrixserverlib.ProtoEvent{SenderID: mallory, RoomID: "!room:" + b.ServerName(), Type: "m.room.member", StateKey: &target,
			Content: raw, PrevEvents: []string{"$prev"}, AuthEvents: []string{"$auth"}, Depth: 5}
		ev, err := gomatrixserverlib.MustGetRoomVersion("10").NewEventBuilderFromProtoEvent(&proto).
			Build(time.Now(), spec.ServerName(b.ServerName()), gomatrixserverlib.KeyID(b.Server.Key.ID), b.Server.Key.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	invitePath := func(ev gomatrixserverlib.PDU) string {
		return "/_matrix/federation/v2/invite/" + url.PathEscape(ev.RoomID().String()) + "/" + url.PathEscape(ev.EventID())
	}
	ev := inviteOf("@someone:elsewhere.example")
	expect(400, "M_INVALID_PARAM", "PUT", invitePath(ev), map[string]any{"room_version": "10", "event": json.RawMessage(ev.JSON())})
	ev = inviteOf("@nobody:" + a.ServerName())
	expect(403, "M_FORBIDDEN", "PUT", invitePath(ev), map[string]any{"room_version": "10", "event": json.RawMessage(ev.JSON())})
	ev = inviteOf(alice.UserID)
	expect(400, "M_INCOMPATIBLE_ROOM_VERSION", "PUT", invitePath(ev), map[string]any{"room_version": "999", "event": json.RawMessage(ev.JSON())})
	expect(400, "M_MISSING_PARAM", "PUT", invitePath(ev), map[string]any{"event": json.RawMessage(ev.JSON())})
	// Version 12 wants the create event among the room state, as a PDU.
	status, resp = ask("PUT", invitePath(ev), map[string]any{"room_version": "10", "event": json.RawMessage(ev.JSON()),
		"invite_room_state": []map[string]any{{"type": "m.room.name", "state_key": "", "sender": mallory, "content": map[string]string{"name": "Old style"}}}})
	if status != 200 || resp.Get("event.signatures."+gjson.Escape(a.ServerName())).Raw == "" {
		t.Fatalf("invite: %d %s", status, resp.Raw)
	}
	if m := mtMembership(t, a, ev.RoomID().String(), alice.UserID); m != "invite" {
		t.Fatalf("alice after the invite: %q", m)
	}
	r := mtWaitSync(t, a, alice, "the invite", func(r gjson.Result) bool {
		return r.Get("rooms.invite." + gjson.Escape(ev.RoomID().String())).Exists()
	})
	if got := mtEvent(r.Get("rooms.invite."+gjson.Escape(ev.RoomID().String())+".invite_state.events"), "m.room.name", "").Get("content.name").String(); got != "Old style" {
		t.Fatalf("invite_state: %s", r.Get("rooms.invite").Raw)
	}
}

// TestJoinRoomWithMembersOfServersThatAreDown joins a room one of whose
// members' servers is down: that member's join, signed by a server we
// cannot reach, is verified with the key the resident server vouches for
// as a notary, and is part of the state the joining server keeps.
func TestJoinRoomWithMembersOfServersThatAreDown(t *testing.T) {
	servers := testserver.NewFederated(t, 3)
	a, b, c := servers[0], servers[1], servers[2]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	carol := c.Register("carol", "password")
	roomID := mtCreateRoom(t, a, alice, map[string]any{"preset": "public_chat"})
	via := "?server_name=" + url.QueryEscape(a.ServerName())
	b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+via, bob.AccessToken, map[string]any{})
	b.Stop()

	c.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+via, carol.AccessToken, map[string]any{})
	if m := mtMembership(t, c, roomID, bob.UserID); m != "join" {
		t.Fatalf("carol's server sees bob (whose server is down) as %q", m)
	}
	joined := c.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", carol.AccessToken, nil)
	for _, u := range []string{alice.UserID, bob.UserID, carol.UserID} {
		if !joined.Get("joined." + gjson.Escape(u)).Exists() {
			t.Errorf("joined_members on carol's server lacks %s: %s", u, joined)
		}
	}
}

// Restricted joins only another server can authorise: a server that
// cannot (no member of it may invite) refuses, a join naming only it
// fails and one naming the authorising server too succeeds through it;
// and a user of the server that cannot, which is in the room already,
// joins through the one that can.
func TestRestrictedJoinThroughAnotherResident(t *testing.T) {
	servers := testserver.NewFederated(t, 3)
	a, b, c := servers[0], servers[1], servers[2]
	alice := a.Register("alice", "password")
	bob := b.Register("bob", "password")
	dave := b.Register("dave", "password")
	carl := c.Register("carl", "password")
	space := mtCreateRoom(t, a, alice, map[string]any{"preset": "public_chat", "room_version": "10"})
	restricted := mtCreateRoom(t, a, alice, map[string]any{"room_version": "10", "initial_state": []map[string]any{{
		"type": "m.room.join_rules", "state_key": "",
		"content": map[string]any{"join_rule": "restricted", "allow": []map[string]string{{"type": "m.room_membership", "room_id": space}}},
	}}, "power_level_content_override": map[string]any{"invite": 100}})
	viaA := "?via=" + url.QueryEscape(a.ServerName())
	viaB := "?via=" + url.QueryEscape(b.ServerName())
	join := func(s *testserver.Server, u *testserver.User, roomID, via string) {
		t.Helper()
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+via, u.AccessToken, map[string]any{})
	}
	join(b, bob, space, viaA)
	join(b, bob, restricted, viaA)
	join(c, carl, space, viaA)

	// B is in the room, but bob may not invite: B cannot authorise carl.
	c.ExpectError(400, "M_UNABLE_TO_GRANT_JOIN", "POST", "/_matrix/client/v3/join/"+url.PathEscape(restricted)+viaB, carl.AccessToken, map[string]any{})
	join(c, carl, restricted, viaB+"&via="+url.QueryEscape(a.ServerName()))
	authorisedVia := func(s *testserver.Server, userID string) string {
		t.Helper()
		m, err := s.Server.Roomserver.Membership(context.Background(), restricted, userID)
		if err != nil || m.Membership != "join" {
			t.Fatalf("%s: %s is %+v %v", s.ServerName(), userID, m, err)
		}
		ev, err := s.Server.Roomserver.Event(context.Background(), m.EventID)
		if err != nil {
			t.Fatal(err)
		}
		return gjson.GetBytes(ev.Content(), "join_authorised_via_users_server").String()
	}
	if got := authorisedVia(c, carl.UserID); got != alice.UserID {
		t.Fatalf("carl's join authorised via %q", got)
	}

	// Dave, on B, which is in the room: B cannot authorise him, A can.
	join(b, dave, space, viaA)
	deadline := time.Now().Add(10 * time.Second)
	for mtMembership(t, a, space, dave.UserID) != "join" {
		if time.Now().After(deadline) {
			t.Fatal("A never learnt of dave's join to the space")
		}
		time.Sleep(20 * time.Millisecond)
	}
	join(b, dave, restricted, viaB)
	for _, s := range []*testserver.Server{a, b} {
		if got := authorisedVia(s, dave.UserID); got != alice.UserID {
			t.Fatalf("%s: dave's join authorised via %q", s.ServerName(), got)
		}
	}
}
