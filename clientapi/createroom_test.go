package clientapi_test

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// crCreateRoom creates a room over HTTP and returns its ID.
func crCreateRoom(t *testing.T, s *testserver.Server, u *testserver.User, body map[string]any) string {
	t.Helper()
	r := s.MustOK("POST", "/_matrix/client/v3/createRoom", u.AccessToken, body)
	roomID := r.Get("room_id").String()
	if !strings.HasPrefix(roomID, "!") {
		t.Fatalf("createRoom: %s", r)
	}
	return roomID
}

// crState reads one current state event's content through the
// roomserver's Go API; it does not exist when the event does not.
func crState(t *testing.T, s *testserver.Server, roomID, evType, stateKey string) gjson.Result {
	t.Helper()
	ev, err := s.Server.Roomserver.CurrentStateEvent(context.Background(), roomID, evType, stateKey)
	if err != nil {
		t.Fatal(err)
	}
	if ev == nil {
		return gjson.Result{}
	}
	return gjson.ParseBytes(ev.Content())
}

// crEventOrder lists a room's events as "type/state_key", in the order
// they entered the room.
func crEventOrder(t *testing.T, s *testserver.Server, roomID string) []string {
	t.Helper()
	out, err := s.Server.Roomserver.OutputSince(context.Background(), 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, o := range out {
		if o.RoomID != roomID {
			continue
		}
		key := o.Event.Type()
		if sk := o.Event.StateKey(); sk != nil && *sk != "" {
			key += "/" + *sk
		}
		order = append(order, key)
	}
	return order
}

func crSetDisplayName(t *testing.T, s *testserver.Server, u *testserver.User, name string) {
	t.Helper()
	s.MustOK("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(u.UserID)+"/displayname", u.AccessToken, map[string]string{"displayname": name})
}

func TestCreateRoomPresets(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		crSetDisplayName(t, s, alice, "Alice")
		crSetDisplayName(t, s, bob, "Bob")

		for _, version := range []string{"10", "12"} {
			for _, preset := range []string{"private_chat", "trusted_private_chat", "public_chat"} {
				t.Run(version+"/"+preset, func(t *testing.T) {
					roomID := crCreateRoom(t, s, alice, map[string]any{
						"preset": preset, "room_version": version, "name": "Room", "topic": "About",
						"invite": []string{bob.UserID}, "is_direct": true,
					})
					v12 := version == "12"
					if v12 == strings.Contains(roomID, ":") {
						t.Fatalf("room ID %s for version %s", roomID, version)
					}

					create := crState(t, s, roomID, "m.room.create", "")
					if create.Get("room_version").String() != version {
						t.Fatalf("create: %s", create.Raw)
					}
					if got := create.Get("creator").String(); v12 != (got == "") || !v12 && got != alice.UserID {
						t.Fatalf("creator in create content: %s", create.Raw)
					}
					trusted := preset == "trusted_private_chat"
					extra := create.Get("additional_creators")
					if v12 && trusted {
						if extra.String() != `["`+bob.UserID+`"]` {
							t.Fatalf("additional_creators: %s", create.Raw)
						}
					} else if extra.Exists() {
						t.Fatalf("unexpected additional_creators: %s", create.Raw)
					}

					join := crState(t, s, roomID, "m.room.member", alice.UserID)
					if join.Get("membership").String() != "join" || join.Get("displayname").String() != "Alice" {
						t.Fatalf("creator's join: %s", join.Raw)
					}

					pl := crState(t, s, roomID, "m.room.power_levels", "")
					users := pl.Get("users").Map()
					if v12 {
						if len(users) != 0 {
							t.Fatalf("v12 power levels list users: %s", pl.Raw)
						}
					} else {
						if users[alice.UserID].Int() != 100 {
							t.Fatalf("creator's level: %s", pl.Raw)
						}
						if bobLevel, listed := users[bob.UserID]; trusted != listed || trusted && bobLevel.Int() != 100 {
							t.Fatalf("invitee's level: %s", pl.Raw)
						}
					}
					wantTombstone := int64(100)
					if v12 {
						wantTombstone = 150
					}
					wantInvite := int64(0)
					if preset == "public_chat" {
						wantInvite = 50
					}
					if pl.Get(`events.m\.room\.tombstone`).Int() != wantTombstone || pl.Get("invite").Int() != wantInvite ||
						pl.Get("state_default").Int() != 50 || pl.Get("ban").Int() != 50 || pl.Get("kick").Int() != 50 ||
						pl.Get("redact").Int() != 50 || pl.Get("events_default").Int() != 0 || pl.Get("users_default").Int() != 0 ||
						pl.Get(`events.m\.room\.power_levels`).Int() != 100 || pl.Get(`events.m\.room\.name`).Int() != 50 ||
						pl.Get(`events.m\.room\.history_visibility`).Int() != 100 || pl.Get(`events.m\.room\.encryption`).Int() != 100 ||
						pl.Get(`events.m\.room\.server_acl`).Int() != 100 || pl.Get(`events.m\.room\.avatar`).Int() != 50 ||
						pl.Get(`events.m\.room\.canonical_alias`).Int() != 50 {
						t.Fatalf("power levels: %s", pl.Raw)
					}

					wantRule, wantGuests := "invite", "can_join"
					if preset == "public_chat" {
						wantRule, wantGuests = "public", "forbidden"
					}
					if got := crState(t, s, roomID, "m.room.join_rules", "").Get("join_rule").String(); got != wantRule {
						t.Fatalf("join rule %q", got)
					}
					if got := crState(t, s, roomID, "m.room.guest_access", "").Get("guest_access").String(); got != wantGuests {
						t.Fatalf("guest access %q", got)
					}
					if got := crState(t, s, roomID, "m.room.history_visibility", "").Get("history_visibility").String(); got != "shared" {
						t.Fatalf("history visibility %q", got)
					}
					if got := crState(t, s, roomID, "m.room.name", "").Get("name").String(); got != "Room" {
						t.Fatalf("name %q", got)
					}
					topic := crState(t, s, roomID, "m.room.topic", "")
					if topic.Get("topic").String() != "About" || topic.Get(`m\.topic.m\.text.0.body`).String() != "About" ||
						topic.Get(`m\.topic.m\.text.0.mimetype`).String() != "text/plain" {
						t.Fatalf("topic: %s", topic.Raw)
					}
					invite := crState(t, s, roomID, "m.room.member", bob.UserID)
					if invite.Get("membership").String() != "invite" || !invite.Get("is_direct").Bool() || invite.Get("displayname").String() != "Bob" {
						t.Fatalf("invite: %s", invite.Raw)
					}

					// The spec's order of events.
					want := []string{"m.room.create", "m.room.member/" + alice.UserID, "m.room.power_levels",
						"m.room.join_rules", "m.room.history_visibility", "m.room.guest_access",
						"m.room.name", "m.room.topic", "m.room.member/" + bob.UserID}
					if got := crEventOrder(t, s, roomID); strings.Join(got, " ") != strings.Join(want, " ") {
						t.Fatalf("event order:\n got %v\nwant %v", got, want)
					}
				})
			}
		}
	})
}

func TestCreateRoomDefaultsAndVisibility(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	ctx := context.Background()

	// Without preset or visibility: a private chat, not listed, in the
	// default room version, and the invite bit absent without is_direct.
	bob := s.Register("bob", "pw")
	roomID := crCreateRoom(t, s, alice, map[string]any{"invite": []string{bob.UserID}})
	if crState(t, s, roomID, "m.room.create", "").Get("room_version").String() != "12" {
		t.Fatal("default room version is not 12")
	}
	if crState(t, s, roomID, "m.room.join_rules", "").Get("join_rule").String() != "invite" {
		t.Fatal("default preset is not private_chat")
	}
	if crState(t, s, roomID, "m.room.member", bob.UserID).Get("is_direct").Exists() {
		t.Fatal("is_direct set without being asked for")
	}
	if published, err := s.Server.Roomserver.Published(ctx, roomID); err != nil || published {
		t.Fatalf("private room published: %v %v", published, err)
	}

	// visibility public: public_chat, listed in the directory.
	roomID = crCreateRoom(t, s, alice, map[string]any{"visibility": "public"})
	if crState(t, s, roomID, "m.room.join_rules", "").Get("join_rule").String() != "public" {
		t.Fatal("visibility public did not pick public_chat")
	}
	if published, err := s.Server.Roomserver.Published(ctx, roomID); err != nil || !published {
		t.Fatalf("public room not published: %v %v", published, err)
	}
	// An explicit preset wins over visibility.
	roomID = crCreateRoom(t, s, alice, map[string]any{"visibility": "public", "preset": "private_chat"})
	if crState(t, s, roomID, "m.room.join_rules", "").Get("join_rule").String() != "invite" {
		t.Fatal("preset did not win over visibility")
	}
	// An empty body is an empty request.
	s.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, nil)

	// Every supported room version: a room others can join.
	for v := 1; v <= 12; v++ {
		version := strconv.Itoa(v)
		roomID := crCreateRoom(t, s, alice, map[string]any{"room_version": version, "preset": "public_chat", "name": "v" + version})
		if got := crState(t, s, roomID, "m.room.create", "").Get("room_version").String(); got != version {
			t.Fatalf("asked for version %s, got %s", version, got)
		}
		s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/join", bob.AccessToken, nil)
	}
}

func TestCreateRoomContentAndOverrides(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")

	roomID := crCreateRoom(t, s, alice, map[string]any{
		"room_version": "10",
		"preset":       "private_chat",
		"name":         "Wins",
		"creation_content": map[string]any{
			"m.federate": false, "type": "m.space", "creator": "@mallory:localhost", "room_version": "1",
		},
		"initial_state": []map[string]any{
			{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "public"}},
			{"type": "m.room.name", "content": map[string]any{"name": "Loses"}},
			{"type": "m.room.encryption", "state_key": "", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}},
			{"type": "org.example.custom", "state_key": "k", "content": map[string]any{"x": 1}},
		},
		"power_level_content_override": map[string]any{"invite": 100, "users": map[string]int{alice.UserID: 100, bob.UserID: 50}},
	})
	create := crState(t, s, roomID, "m.room.create", "")
	if create.Get(`m\.federate`).Bool() || !create.Get(`m\.federate`).Exists() || create.Get("type").String() != "m.space" ||
		create.Get("creator").String() != alice.UserID || create.Get("room_version").String() != "10" {
		t.Fatalf("create content: %s", create.Raw)
	}
	pl := crState(t, s, roomID, "m.room.power_levels", "")
	if pl.Get("invite").Int() != 100 || pl.Get("users."+strings.ReplaceAll(bob.UserID, ".", `\.`)).Int() != 50 || pl.Get("kick").Int() != 50 {
		t.Fatalf("override not applied on top of the defaults: %s", pl.Raw)
	}
	if crState(t, s, roomID, "m.room.join_rules", "").Get("join_rule").String() != "public" {
		t.Fatal("initial_state did not override the preset")
	}
	if crState(t, s, roomID, "m.room.name", "").Get("name").String() != "Wins" {
		t.Fatal("name did not override initial_state")
	}
	if crState(t, s, roomID, "org.example.custom", "k").Get("x").Int() != 1 ||
		!crState(t, s, roomID, "m.room.encryption", "").Exists() {
		t.Fatal("initial_state events missing")
	}
	want := []string{"m.room.create", "m.room.member/" + alice.UserID, "m.room.power_levels",
		"m.room.history_visibility", "m.room.guest_access",
		"m.room.join_rules", "m.room.encryption", "org.example.custom/k", "m.room.name"}
	if got := crEventOrder(t, s, roomID); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("event order:\n got %v\nwant %v", got, want)
	}

	// Version 12: additional creators from creation_content and the
	// trusted invitees, deduplicated, the creator left out.
	roomID = crCreateRoom(t, s, alice, map[string]any{
		"preset": "trusted_private_chat", "invite": []string{bob.UserID},
		"creation_content": map[string]any{"additional_creators": []string{bob.UserID, alice.UserID, "@carol:elsewhere.example"}},
	})
	if got := crState(t, s, roomID, "m.room.create", "").Get("additional_creators").String(); got != `["`+bob.UserID+`","@carol:elsewhere.example"]` {
		t.Fatalf("additional_creators %s", got)
	}
}

func TestCreateRoomAlias(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		ctx := context.Background()

		roomID := crCreateRoom(t, s, alice, map[string]any{"room_alias_name": "pub", "preset": "public_chat"})
		alias := "#pub:" + s.Config.ServerName
		if got, err := s.Server.Roomserver.ResolveAlias(ctx, alias); err != nil || got != roomID {
			t.Fatalf("alias resolves to %q, %v", got, err)
		}
		if got := crState(t, s, roomID, "m.room.canonical_alias", "").Get("alias").String(); got != alias {
			t.Fatalf("canonical alias %q", got)
		}
		want := []string{"m.room.create", "m.room.member/" + alice.UserID, "m.room.power_levels", "m.room.canonical_alias",
			"m.room.join_rules", "m.room.history_visibility", "m.room.guest_access"}
		if got := crEventOrder(t, s, roomID); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("event order:\n got %v\nwant %v", got, want)
		}

		// Taken: no room is made.
		s.ExpectError(400, "M_ROOM_IN_USE", "POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"room_alias_name": "pub"})
		if rooms, _ := s.Server.Roomserver.Memberships(ctx, bob.UserID); len(rooms) != 0 {
			t.Fatalf("a room was made for a taken alias: %v", rooms)
		}
		for _, bad := range []string{"", "a:b", "nul\x00", strings.Repeat("x", 250)} {
			s.ExpectError(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"room_alias_name": bad})
		}
		// Any Unicode is allowed in an alias localpart.
		crCreateRoom(t, s, bob, map[string]any{"room_alias_name": "café"})
	})
}

func TestCreateRoomAliasRace(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		ctx := context.Background()
		// The alias is taken inside the creation transaction: a room whose
		// alias is taken by then is not made at all.
		alias := "#raced:" + s.Config.ServerName
		if err := s.Server.Roomserver.SetAlias(ctx, alias, "!other:"+s.Config.ServerName, alice.UserID); err != nil {
			t.Fatal(err)
		}
		_, err := s.Server.Roomserver.CreateRoom(ctx, rsapi.CreateRoomRequest{
			Version: "12", Creator: alice.UserID, Alias: alias,
			InitialState: []rsapi.StateEvent{{Type: "m.room.member", StateKey: alice.UserID, Content: map[string]any{"membership": "join"}}},
		})
		if !errors.Is(err, rsapi.ErrAliasInUse) {
			t.Fatalf("CreateRoom with a taken alias: %v", err)
		}
		if rooms, _ := s.Server.Roomserver.Memberships(ctx, alice.UserID); len(rooms) != 0 {
			t.Fatalf("a room was made: %v", rooms)
		}

		// Many clients at once: one gets the alias, the rest M_ROOM_IN_USE.
		const n = 6
		statuses := make(chan *testserver.Response, n)
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses <- s.Request("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"room_alias_name": "contested"})
			}()
		}
		wg.Wait()
		close(statuses)
		won := 0
		for r := range statuses {
			switch {
			case r.Status == 200:
				won++
			case r.Status != 400 || r.Get("errcode").String() != "M_ROOM_IN_USE":
				t.Fatalf("racing createRoom: %s", r)
			}
		}
		if rooms, _ := s.Server.Roomserver.Memberships(ctx, alice.UserID); won != 1 || len(rooms) != 1 {
			t.Fatalf("%d requests won the alias, %d rooms made", won, len(rooms))
		}
	})
}

func TestCreateRoomBadRequests(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	alice := s.Register("alice", "pw")
	path := "/_matrix/client/v3/createRoom"
	bad := func(status int, errcode string, body any) {
		t.Helper()
		s.ExpectError(status, errcode, "POST", path, alice.AccessToken, body)
	}
	bad(400, "M_UNSUPPORTED_ROOM_VERSION", map[string]any{"room_version": "99"})
	bad(400, "M_UNSUPPORTED_ROOM_VERSION", map[string]any{"room_version": "org.matrix.msc2176"})
	bad(400, "M_INVALID_PARAM", map[string]any{"preset": "party"})
	bad(400, "M_INVALID_PARAM", map[string]any{"visibility": "secret"})
	bad(400, "M_BAD_JSON", `{"name": 5}`)
	bad(400, "M_BAD_JSON", `{"invite": "@bob:localhost"}`)
	bad(400, "M_BAD_JSON", `{"is_direct": "yes"}`)
	bad(400, "M_BAD_JSON", `{"creation_content": []}`)
	bad(400, "M_BAD_JSON", map[string]any{"creation_content": map[string]any{"m.federate": "no"}})
	bad(400, "M_BAD_JSON", map[string]any{"creation_content": map[string]any{"additional_creators": "@bob:localhost"}})
	bad(400, "M_INVALID_PARAM", map[string]any{"creation_content": map[string]any{"additional_creators": []string{"bob"}}})
	bad(400, "M_BAD_JSON", map[string]any{"initial_state": []map[string]any{{"content": map[string]any{}}}})
	bad(400, "M_BAD_JSON", map[string]any{"initial_state": []map[string]any{{"type": "m.room.topic", "content": "x"}}})
	bad(400, "M_BAD_JSON", map[string]any{"initial_state": []map[string]any{{"type": "m.room.topic"}}})
	bad(400, "M_NOT_JSON", "nope")
	// Invitees.
	bad(400, "M_INVALID_PARAM", map[string]any{"invite": []string{"bob"}})
	bad(400, "M_INVALID_PARAM", map[string]any{"invite": []string{alice.UserID}})
	bad(404, "M_NOT_FOUND", map[string]any{"invite": []string{"@nobody:" + s.Config.ServerName}})
	bad(400, "M_SERVER_NOT_TRUSTED", map[string]any{"invite_3pid": []map[string]string{{
		"id_server": "id.example", "id_access_token": "t", "medium": "email", "address": "bob@example.org"}}})
	// Initial state the auth rules refuse: the creator gives away the power
	// to send the events that follow.
	bad(400, "M_INVALID_ROOM_STATE", map[string]any{"room_version": "10", "name": "x",
		"power_level_content_override": map[string]any{"users": map[string]int{}}})
	// In version 12 creators must not be listed in the power levels.
	bad(400, "M_INVALID_ROOM_STATE", map[string]any{"power_level_content_override": map[string]any{"users": map[string]int{alice.UserID: 100}}})
	bad(400, "M_INVALID_ROOM_STATE", map[string]any{"initial_state": []map[string]any{{"type": "m.room.create", "content": map[string]any{}}}})
	if rooms, _ := s.Server.Roomserver.Memberships(context.Background(), alice.UserID); len(rooms) != 0 {
		t.Fatalf("failed requests made rooms: %v", rooms)
	}
	// Users of other servers are invited over federation once the room
	// exists; a server that cannot be reached does not undo the room.
	s.MustOK("POST", path, alice.AccessToken, map[string]any{"invite": []string{"@bob:elsewhere.example"}})

	s.ExpectError(401, "M_MISSING_TOKEN", "POST", path, "", map[string]any{})
	guest := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", path, guest.Get("access_token").String(), map[string]any{})
}
