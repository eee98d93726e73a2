package clientapi_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/federationapi"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func hierarchyPath(roomID, query string) string {
	return "/_matrix/client/v1/rooms/" + url.PathEscape(roomID) + "/hierarchy" + query
}

// addChild links child into space with the given m.space.child content.
func addChild(t *testing.T, s *testserver.Server, u *testserver.User, space, child string, content map[string]any) {
	t.Helper()
	s.MustOK("PUT", roomPath(space, "state", "m.space.child", child), u.AccessToken, content)
}

func newSpace(t *testing.T, s *testserver.Server, u *testserver.User, name string) string {
	t.Helper()
	return crCreateRoom(t, s, u, map[string]any{"preset": "public_chat", "name": name,
		"creation_content": map[string]any{"type": "m.space"}})
}

func hierarchyIDs(r *testserver.Response) []string {
	var ids []string
	for _, room := range r.Get("rooms").Array() {
		ids = append(ids, room.Get("room_id").String())
	}
	return ids
}

func expectIDs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func TestSpaceHierarchy(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		here := []string{s.ServerName()}
		// space: a, sub (b, private), d (suggested); c is linked without via.
		space := newSpace(t, s, alice, "Space")
		a := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat", "name": "A"})
		sub := newSpace(t, s, alice, "Sub")
		b := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat", "name": "B"})
		private := crCreateRoom(t, s, alice, map[string]any{"preset": "private_chat", "name": "Private"})
		c := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat", "name": "C"})
		d := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat", "name": "D"})
		addChild(t, s, alice, space, a, map[string]any{"via": here, "order": "1"})
		addChild(t, s, alice, space, sub, map[string]any{"via": here, "order": "2"})
		addChild(t, s, alice, space, c, map[string]any{})
		addChild(t, s, alice, space, d, map[string]any{"via": here, "order": "3", "suggested": true})
		addChild(t, s, alice, sub, b, map[string]any{"via": here, "order": "1"})
		addChild(t, s, alice, sub, private, map[string]any{"via": here, "order": "2"})
		addChild(t, s, alice, sub, space, map[string]any{"via": here, "order": "3"}) // a loop

		r := s.MustOK("GET", hierarchyPath(space, ""), bob.AccessToken, nil)
		expectIDs(t, "bob's tree", hierarchyIDs(r), space, a, sub, b, d)
		if r.Get("next_batch").Exists() {
			t.Fatalf("one page has a next_batch: %s", r)
		}
		root := r.Get("rooms.0")
		if root.Get("name").String() != "Space" || root.Get("room_type").String() != "m.space" || root.Get("join_rule").String() != "public" ||
			root.Get("num_joined_members").Int() != 1 || root.Get("room_version").String() == "" || !root.Get("world_readable").Exists() {
			t.Fatalf("root summary: %s", root.Raw)
		}
		var childKeys []string
		for _, ev := range root.Get("children_state").Array() {
			childKeys = append(childKeys, ev.Get("state_key").String())
			if ev.Get("type").String() != "m.space.child" || ev.Get("origin_server_ts").Int() == 0 || ev.Get("sender").String() != alice.UserID {
				t.Fatalf("children_state entry: %s", ev.Raw)
			}
		}
		expectIDs(t, "children_state (c has no via)", childKeys, a, sub, d)
		if n := r.Get("rooms.1.children_state.#").Int(); n != 0 {
			t.Fatalf("a plain room has children_state: %s", r.Get("rooms.1").Raw)
		}
		// Alice is in the private room and sees it.
		expectIDs(t, "alice's tree", hierarchyIDs(s.MustOK("GET", hierarchyPath(space, ""), alice.AccessToken, nil)), space, a, sub, b, private, d)

		expectIDs(t, "max_depth=1", hierarchyIDs(s.MustOK("GET", hierarchyPath(space, "?max_depth=1"), bob.AccessToken, nil)), space, a, sub, d)
		expectIDs(t, "max_depth=0", hierarchyIDs(s.MustOK("GET", hierarchyPath(space, "?max_depth=0"), bob.AccessToken, nil)), space)
		expectIDs(t, "suggested_only", hierarchyIDs(s.MustOK("GET", hierarchyPath(space, "?suggested_only=true"), bob.AccessToken, nil)), space, d)

		// Pages of two.
		var got []string
		r = s.MustOK("GET", hierarchyPath(space, "?limit=2"), bob.AccessToken, nil)
		got = append(got, hierarchyIDs(r)...)
		first := r.Get("next_batch").String()
		for pages := 0; r.Get("next_batch").Exists(); pages++ {
			if pages > 5 {
				t.Fatal("pagination does not end")
			}
			r = s.MustOK("GET", hierarchyPath(space, "?limit=2&from="+url.QueryEscape(r.Get("next_batch").String())), bob.AccessToken, nil)
			got = append(got, hierarchyIDs(r)...)
		}
		expectIDs(t, "paged tree", got, space, a, sub, b, d)
		// The token is bound to the request's parameters and user.
		s.ExpectError(400, "M_INVALID_PARAM", "GET", hierarchyPath(space, "?limit=2&max_depth=1&from="+url.QueryEscape(first)), bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", hierarchyPath(space, "?limit=2&suggested_only=true&from="+url.QueryEscape(first)), bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", hierarchyPath(space, "?from="+url.QueryEscape(first)), alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", hierarchyPath(space, "?from=nonsense"), bob.AccessToken, nil)
		// Bad parameters; a root bob may not see.
		s.ExpectError(400, "M_INVALID_PARAM", "GET", hierarchyPath(space, "?limit=0"), bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", hierarchyPath(space, "?max_depth=-1"), bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", hierarchyPath(space, "?suggested_only=maybe"), bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "GET", hierarchyPath(private, ""), bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "GET", hierarchyPath("!unknown:"+s.ServerName(), ""), bob.AccessToken, nil)
	})
}

func TestSpaceHierarchyRestrictedChild(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	here := []string{s.ServerName()}
	space := newSpace(t, s, alice, "Space")
	restricted := crCreateRoom(t, s, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{{
		"type": "m.room.join_rules", "state_key": "",
		"content": map[string]any{"join_rule": "restricted", "allow": []map[string]any{{"type": "m.room_membership", "room_id": space}}},
	}}})
	addChild(t, s, alice, space, restricted, map[string]any{"via": here})
	// Not in the space: bob cannot join the restricted room, nor see it.
	expectIDs(t, "outside the space", hierarchyIDs(s.MustOK("GET", hierarchyPath(space, ""), bob.AccessToken, nil)), space)
	s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(space), bob.AccessToken, map[string]any{})
	r := s.MustOK("GET", hierarchyPath(space, ""), bob.AccessToken, nil)
	expectIDs(t, "inside the space", hierarchyIDs(r), space, restricted)
	if r.Get("rooms.1.allowed_room_ids.0").String() != space || r.Get("rooms.1.join_rule").String() != "restricted" {
		t.Fatalf("restricted child: %s", r.Get("rooms.1").Raw)
	}
}

func TestRoomSummary(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		public := crCreateRoom(t, s, alice, map[string]any{"preset": "public_chat", "name": "Public", "room_alias_name": "pub"})
		private := crCreateRoom(t, s, alice, map[string]any{"preset": "private_chat", "name": "Private", "topic": "secret"})
		summary := func(idOrAlias string) string { return "/_matrix/client/v1/room_summary/" + url.PathEscape(idOrAlias) }

		r := s.MustOK("GET", summary(private), alice.AccessToken, nil)
		if r.Get("membership").String() != "join" || r.Get("name").String() != "Private" || r.Get("topic").String() != "secret" ||
			r.Get("join_rule").String() != "invite" || r.Get("room_version").String() == "" || r.Get("children_state").Exists() {
			t.Fatalf("joined room summary: %s", r)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", summary(private), bob.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", summary(private), "", nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", summary("!nowhere:"+s.ServerName()), bob.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", summary("#nothing:"+s.ServerName()), bob.AccessToken, nil)
		s.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", summary(public), "not-a-token", nil)

		r = s.MustOK("GET", summary("#pub:"+s.ServerName()), bob.AccessToken, nil)
		if r.Get("room_id").String() != public || r.Get("membership").String() != "leave" || r.Get("canonical_alias").String() != "#pub:"+s.ServerName() {
			t.Fatalf("public room by alias: %s", r)
		}
		// Without a token: public rooms only, and no membership.
		r = s.MustOK("GET", summary(public), "", nil)
		if r.Get("room_id").String() != public || r.Get("membership").Exists() {
			t.Fatalf("anonymous summary: %s", r)
		}
		// Knockable rooms may be seen by anyone, so that they can knock.
		knock := crCreateRoom(t, s, alice, map[string]any{"preset": "private_chat", "initial_state": []map[string]any{{
			"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "knock"}}}})
		if r := s.MustOK("GET", summary(knock), bob.AccessToken, nil); r.Get("join_rule").String() != "knock" {
			t.Fatalf("knockable room: %s", r)
		}
		s.MustOK("GET", summary(knock), "", nil)
		// Invited: bob may see the private room.
		s.MustOK("POST", roomPath(private, "invite"), alice.AccessToken, map[string]any{"user_id": bob.UserID})
		r = s.MustOK("GET", "/_matrix/client/unstable/im.nheko.summary/summary/"+url.PathEscape(private), bob.AccessToken, nil)
		if r.Get("membership").String() != "invite" {
			t.Fatalf("invited summary: %s", r)
		}
	})
}

// A space on one server whose child lives on another: the hierarchy and
// the room summary fetch it over federation, and the federation endpoint
// lists what the asking server cannot reach as inaccessible.
func TestSpaceHierarchyOverFederation(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "pw")
	bert := b.Register("bert", "pw")
	space := newSpace(t, a, alice, "Space")
	remoteSpace := newSpace(t, b, bert, "Remote space")
	remoteRoom := crCreateRoom(t, b, bert, map[string]any{"preset": "public_chat", "name": "Remote room"})
	remotePrivate := crCreateRoom(t, b, bert, map[string]any{"preset": "private_chat", "name": "Remote private"})
	addChild(t, a, alice, space, remoteSpace, map[string]any{"via": []string{b.ServerName()}})
	addChild(t, b, bert, remoteSpace, remoteRoom, map[string]any{"via": []string{b.ServerName()}})
	addChild(t, b, bert, remoteSpace, remotePrivate, map[string]any{"via": []string{b.ServerName()}})

	// The federation endpoint, as a asks it.
	data, err := federationapi.NewQueries(a.Server.Federation).RemoteHierarchy(context.Background(), b.ServerName(), remoteSpace, false)
	if err != nil {
		t.Fatal(err)
	}
	fed := gjson.ParseBytes(data)
	if fed.Get("room.room_id").String() != remoteSpace || fed.Get("room.children_state.#").Int() != 2 ||
		fed.Get("children.#").Int() != 1 || fed.Get("children.0.room_id").String() != remoteRoom ||
		fed.Get("inaccessible_children.0").String() != remotePrivate {
		t.Fatalf("federation hierarchy: %s", data)
	}
	resp, err := a.Server.Federation.DoSigned(context.Background(), "GET", spec.ServerName(b.ServerName()),
		"/_matrix/federation/v1/hierarchy/"+url.PathEscape(remotePrivate), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("a private room's hierarchy for another server: %d", resp.StatusCode)
	}

	r := a.MustOK("GET", hierarchyPath(space, ""), alice.AccessToken, nil)
	expectIDs(t, "tree across servers", hierarchyIDs(r), space, remoteSpace, remoteRoom)
	if r.Get("rooms.1.name").String() != "Remote space" || r.Get("rooms.2.name").String() != "Remote room" {
		t.Fatalf("remote rooms: %s", r)
	}
	r = a.MustOK("GET", "/_matrix/client/v1/room_summary/"+url.PathEscape(remoteRoom)+"?via="+url.QueryEscape(b.ServerName()), alice.AccessToken, nil)
	if r.Get("name").String() != "Remote room" || r.Get("membership").String() != "leave" {
		t.Fatalf("remote summary: %s", r)
	}
	a.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v1/room_summary/"+url.PathEscape(remotePrivate)+"?via="+url.QueryEscape(b.ServerName()), alice.AccessToken, nil)
}
