package clientapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// dirCreateRoom makes a public room through the roomserver's Go API (the
// createRoom endpoint is built alongside): the creator joined, power levels
// as public_chat sets them, then extra state.
func dirCreateRoom(t *testing.T, s *testserver.Server, creator *testserver.User, version string, extra ...rsapi.StateEvent) string {
	t.Helper()
	users := map[string]int{creator.UserID: 100}
	if version == "12" {
		users = map[string]int{} // creators have unlimited power and are not listed
	}
	state := append([]rsapi.StateEvent{
		{Type: "m.room.member", StateKey: creator.UserID, Content: map[string]any{"membership": "join"}},
		{Type: "m.room.power_levels", Content: map[string]any{
			"users": users, "users_default": 0, "events_default": 0, "state_default": 50,
			"ban": 50, "kick": 50, "redact": 50, "invite": 0,
			"events": map[string]int{"m.room.power_levels": 100, "m.room.tombstone": 100, "m.room.canonical_alias": 50},
		}},
		{Type: "m.room.join_rules", Content: map[string]any{"join_rule": "public"}},
		{Type: "m.room.history_visibility", Content: map[string]any{"history_visibility": "shared"}},
	}, extra...)
	roomID, err := s.Server.Roomserver.CreateRoom(context.Background(), rsapi.CreateRoomRequest{
		Version: gomatrixserverlib.RoomVersion(version), Creator: creator.UserID, InitialState: state,
	})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	return roomID
}

// dirSendState sends a state event as a user through the roomserver.
func dirSendState(s *testserver.Server, user *testserver.User, roomID, evType, stateKey string, content any) error {
	raw, _ := json.Marshal(content)
	_, err := s.Server.Roomserver.SendEvent(context.Background(), rsapi.NewEvent{
		RoomID: roomID, Sender: user.UserID, Type: evType, StateKey: &stateKey, Content: raw,
	})
	return err
}

func dirJoin(t *testing.T, s *testserver.Server, user *testserver.User, roomID string) {
	t.Helper()
	if err := dirSendState(s, user, roomID, "m.room.member", user.UserID, map[string]string{"membership": "join"}); err != nil {
		t.Fatalf("%s joins %s: %v", user.UserID, roomID, err)
	}
}

// dirState is the content of a current state event, read through the roomserver.
func dirState(t *testing.T, s *testserver.Server, roomID, evType, stateKey string) gjson.Result {
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

func aliasPath(alias string) string {
	return "/_matrix/client/v3/directory/room/" + url.PathEscape(alias)
}

func TestRoomAliases(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice, bob, carol := s.Register("alice", "pw"), s.Register("bob", "pw"), s.Register("carol", "pw")
		roomID := dirCreateRoom(t, s, alice, "11")
		other := dirCreateRoom(t, s, carol, "11")

		s.MustOK("PUT", aliasPath("#room:localhost"), alice.AccessToken, map[string]string{"room_id": roomID})
		// Resolving needs no access token.
		r := s.MustOK("GET", aliasPath("#room:localhost"), "", nil)
		if r.Get("room_id").String() != roomID || r.Get("servers").Raw != `["localhost"]` {
			t.Fatalf("resolve: %s", r)
		}
		// The r0 prefix and a Unicode localpart work too.
		s.MustOK("PUT", "/_matrix/client/r0/directory/room/"+url.PathEscape("#Ünïcödé room:localhost"), alice.AccessToken, map[string]string{"room_id": roomID})

		// Taken, for the same room or another.
		s.ExpectError(409, "M_UNKNOWN", "PUT", aliasPath("#room:localhost"), alice.AccessToken, map[string]string{"room_id": roomID})
		s.ExpectError(409, "M_UNKNOWN", "PUT", aliasPath("#room:localhost"), carol.AccessToken, map[string]string{"room_id": other})

		// Bad aliases and bodies.
		for _, bad := range []string{"room:localhost", "#room", "#:localhost", "#room:bad_server!", "#ro\x00om:localhost", "#" + strings.Repeat("a", 250) + ":localhost"} {
			s.ExpectError(400, "M_INVALID_PARAM", "PUT", aliasPath(bad), alice.AccessToken, map[string]string{"room_id": roomID})
			s.ExpectError(400, "M_INVALID_PARAM", "GET", aliasPath(bad), "", nil)
		}
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", aliasPath("#room:elsewhere.example"), alice.AccessToken, map[string]string{"room_id": roomID})
		s.ExpectError(400, "M_MISSING_PARAM", "PUT", aliasPath("#new:localhost"), alice.AccessToken, map[string]string{})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", aliasPath("#new:localhost"), alice.AccessToken, map[string]string{"room_id": "nope"})
		s.ExpectError(400, "M_BAD_JSON", "PUT", aliasPath("#new:localhost"), alice.AccessToken, map[string]int{"room_id": 1})
		s.ExpectError(400, "M_NOT_JSON", "PUT", aliasPath("#new:localhost"), alice.AccessToken, "nope")
		s.ExpectError(404, "M_NOT_FOUND", "PUT", aliasPath("#new:localhost"), alice.AccessToken, map[string]string{"room_id": "!unknown:localhost"})
		s.ExpectError(401, "M_MISSING_TOKEN", "PUT", aliasPath("#new:localhost"), "", map[string]string{"room_id": roomID})
		// Only members may alias a room.
		s.ExpectError(403, "M_FORBIDDEN", "PUT", aliasPath("#new:localhost"), bob.AccessToken, map[string]string{"room_id": roomID})
		s.ExpectError(404, "M_NOT_FOUND", "GET", aliasPath("#new:localhost"), "", nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", aliasPath("#room:elsewhere.example"), "", nil)

		// Listing: members, not others.
		aliasesPath := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/aliases"
		r = s.MustOK("GET", aliasesPath, alice.AccessToken, nil)
		if r.Get("aliases.#").Int() != 2 || r.Get("aliases.0").String() != "#room:localhost" {
			t.Fatalf("aliases: %s", r)
		}
		s.ExpectError(403, "M_FORBIDDEN", "GET", aliasesPath, bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "GET", "/_matrix/client/v3/rooms/!unknown:localhost/aliases", bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/rooms/nope/aliases", bob.AccessToken, nil)
		s.ExpectError(401, "M_MISSING_TOKEN", "GET", aliasesPath, "", nil)
		// A world-readable room's aliases are anyone's to see.
		if err := dirSendState(s, alice, roomID, "m.room.history_visibility", "", map[string]string{"history_visibility": "world_readable"}); err != nil {
			t.Fatal(err)
		}
		s.MustOK("GET", aliasesPath, bob.AccessToken, nil)
		r = s.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(other)+"/aliases", carol.AccessToken, nil)
		if r.Get("aliases").Raw != "[]" {
			t.Fatalf("no aliases: %s", r)
		}

		// Deleting: bob joins with no power; he may delete only his own alias.
		dirJoin(t, s, bob, roomID)
		s.MustOK("PUT", aliasPath("#bobs:localhost"), bob.AccessToken, map[string]string{"room_id": roomID})
		s.ExpectError(403, "M_FORBIDDEN", "DELETE", aliasPath("#room:localhost"), bob.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "DELETE", aliasPath("#room:localhost"), carol.AccessToken, nil)
		s.MustOK("DELETE", aliasPath("#bobs:localhost"), bob.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", aliasPath("#bobs:localhost"), "", nil)
		s.ExpectError(404, "M_NOT_FOUND", "DELETE", aliasPath("#bobs:localhost"), bob.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "DELETE", aliasPath("#room:elsewhere.example"), bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "DELETE", aliasPath("room"), bob.AccessToken, nil)
		// Alice, with the power to send m.room.canonical_alias, may delete bob's.
		s.MustOK("PUT", aliasPath("#bobs:localhost"), bob.AccessToken, map[string]string{"room_id": roomID})
		s.MustOK("DELETE", aliasPath("#bobs:localhost"), alice.AccessToken, nil)
	})
}

func TestDeletingAliasUpdatesCanonicalAlias(t *testing.T) {
	s := testserver.New(t, withSharedSecret)
	alice := s.Register("alice", "pw")
	roomID := dirCreateRoom(t, s, alice, "10")
	for _, a := range []string{"#main:localhost", "#alt:localhost", "#keep:localhost"} {
		s.MustOK("PUT", aliasPath(a), alice.AccessToken, map[string]string{"room_id": roomID})
	}
	if err := dirSendState(s, alice, roomID, "m.room.canonical_alias", "", map[string]any{
		"alias": "#main:localhost", "alt_aliases": []string{"#alt:localhost", "#keep:localhost"},
	}); err != nil {
		t.Fatal(err)
	}
	s.MustOK("DELETE", aliasPath("#main:localhost"), alice.AccessToken, nil)
	s.MustOK("DELETE", aliasPath("#alt:localhost"), alice.AccessToken, nil)
	c := dirState(t, s, roomID, "m.room.canonical_alias", "")
	if c.Get("alias").Exists() || c.Get("alt_aliases").Raw != `["#keep:localhost"]` {
		t.Fatalf("canonical alias after deletes: %s", c.Raw)
	}

	// A server admin may delete any alias, without being in the room; the
	// canonical alias is then left as it is (the admin may not send it).
	admin := s.MustOK("POST", adminRegisterPath, "", sharedSecretBody(s, sharedSecret, "root", "pw", true)).Get("access_token").String()
	s.MustOK("DELETE", aliasPath("#keep:localhost"), admin, nil)
	s.ExpectError(404, "M_NOT_FOUND", "GET", aliasPath("#keep:localhost"), "", nil)
	if c := dirState(t, s, roomID, "m.room.canonical_alias", ""); c.Get("alt_aliases").Raw != `["#keep:localhost"]` {
		t.Fatalf("canonical alias after admin delete: %s", c.Raw)
	}
}

func TestRoomDirectoryVisibility(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice, bob, carol := s.Register("alice", "pw"), s.Register("bob", "pw"), s.Register("carol", "pw")
		roomID := dirCreateRoom(t, s, alice, "11")
		dirJoin(t, s, bob, roomID)
		path := "/_matrix/client/v3/directory/list/room/" + url.PathEscape(roomID)

		// Reading needs no access token.
		if r := s.MustOK("GET", path, "", nil); r.Get("visibility").String() != "private" {
			t.Fatalf("new room: %s", r)
		}
		// A member without power, and a stranger, may not publish.
		s.ExpectError(403, "M_FORBIDDEN", "PUT", path, bob.AccessToken, map[string]string{"visibility": "public"})
		s.ExpectError(403, "M_FORBIDDEN", "PUT", path, carol.AccessToken, map[string]string{"visibility": "public"})
		s.ExpectError(401, "M_MISSING_TOKEN", "PUT", path, "", map[string]string{"visibility": "public"})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", path, alice.AccessToken, map[string]string{"visibility": "hidden"})
		s.ExpectError(400, "M_BAD_JSON", "PUT", path, alice.AccessToken, map[string]bool{"visibility": true})
		s.ExpectError(404, "M_NOT_FOUND", "PUT", "/_matrix/client/v3/directory/list/room/!unknown:localhost", alice.AccessToken, map[string]string{"visibility": "public"})
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/directory/list/room/!unknown:localhost", "", nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/directory/list/room/nope", "", nil)
		if r := s.MustOK("GET", path, "", nil); r.Get("visibility").String() != "private" {
			t.Fatalf("after refusals: %s", r)
		}

		// The creator may; an empty body means public.
		s.MustOK("PUT", path, alice.AccessToken, map[string]string{})
		if r := s.MustOK("GET", path, "", nil); r.Get("visibility").String() != "public" {
			t.Fatalf("published: %s", r)
		}
		// Bob, once given the power to send m.room.canonical_alias, may too.
		if err := dirSendState(s, alice, roomID, "m.room.power_levels", "", map[string]any{
			"users": map[string]int{alice.UserID: 100, bob.UserID: 50}, "state_default": 50,
			"events": map[string]int{"m.room.power_levels": 100, "m.room.tombstone": 100, "m.room.canonical_alias": 50},
		}); err != nil {
			t.Fatal(err)
		}
		s.MustOK("PUT", path, bob.AccessToken, map[string]string{"visibility": "private"})
		if r := s.MustOK("GET", path, "", nil); r.Get("visibility").String() != "private" {
			t.Fatalf("unpublished: %s", r)
		}
	})
}

func TestRoomDirectoryVisibilityByAdmin(t *testing.T) {
	s := testserver.New(t, withSharedSecret)
	alice := s.Register("alice", "pw")
	roomID := dirCreateRoom(t, s, alice, "12")
	path := "/_matrix/client/v3/directory/list/room/" + url.PathEscape(roomID)
	admin := s.MustOK("POST", adminRegisterPath, "", sharedSecretBody(s, sharedSecret, "root", "pw", true)).Get("access_token").String()
	s.MustOK("PUT", path, admin, map[string]string{"visibility": "public"})
	if r := s.MustOK("GET", path, "", nil); r.Get("visibility").String() != "public" {
		t.Fatalf("published by admin: %s", r)
	}
}

func TestPublicRooms(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice, bob, carol := s.Register("alice", "pw"), s.Register("bob", "pw"), s.Register("carol", "pw")
		publish := func(roomID string) {
			s.MustOK("PUT", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(roomID), alice.AccessToken, map[string]string{"visibility": "public"})
		}
		// Three members: the first in the list.
		big := dirCreateRoom(t, s, alice, "11",
			rsapi.StateEvent{Type: "m.room.name", Content: map[string]string{"name": "Big Room"}},
			rsapi.StateEvent{Type: "m.room.topic", Content: map[string]any{
				"topic": "fallback",
				"m.topic": map[string]any{"m.text": []map[string]string{
					{"mimetype": "text/html", "body": "<b>Cheese</b> talk"}, {"mimetype": "text/plain", "body": "Cheese talk"},
				}},
			}},
			rsapi.StateEvent{Type: "m.room.avatar", Content: map[string]string{"url": "mxc://localhost/abc"}},
			rsapi.StateEvent{Type: "m.room.history_visibility", Content: map[string]string{"history_visibility": "world_readable"}},
			rsapi.StateEvent{Type: "m.room.guest_access", Content: map[string]string{"guest_access": "can_join"}},
		)
		dirJoin(t, s, bob, big)
		dirJoin(t, s, carol, big)
		s.MustOK("PUT", aliasPath("#big:localhost"), alice.AccessToken, map[string]string{"room_id": big})
		if err := dirSendState(s, alice, big, "m.room.canonical_alias", "", map[string]string{"alias": "#big:localhost"}); err != nil {
			t.Fatal(err)
		}
		publish(big)
		// Two members, a knock room.
		knock := dirCreateRoom(t, s, alice, "11",
			rsapi.StateEvent{Type: "m.room.name", Content: map[string]string{"name": "Knockers"}},
			rsapi.StateEvent{Type: "m.room.topic", Content: map[string]string{"topic": "Knock first"}},
		)
		dirJoin(t, s, bob, knock)
		if err := dirSendState(s, alice, knock, "m.room.join_rules", "", map[string]string{"join_rule": "knock"}); err != nil {
			t.Fatal(err)
		}
		publish(knock)
		// One member each: a space and a plain room, then by room ID.
		spaceID, err := s.Server.Roomserver.CreateRoom(context.Background(), rsapi.CreateRoomRequest{
			Version: "11", Creator: alice.UserID, CreateContent: map[string]any{"type": "m.space"},
			InitialState: []rsapi.StateEvent{
				{Type: "m.room.member", StateKey: alice.UserID, Content: map[string]string{"membership": "join"}},
				{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "public"}},
				{Type: "m.room.name", Content: map[string]string{"name": "A Space"}},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		publish(spaceID)
		plain := dirCreateRoom(t, s, alice, "12", rsapi.StateEvent{Type: "m.room.name", Content: map[string]string{"name": "Quiet"}})
		publish(plain)
		// Not published: never listed.
		dirCreateRoom(t, s, alice, "11", rsapi.StateEvent{Type: "m.room.name", Content: map[string]string{"name": "Secret cheese"}})

		ones := []string{spaceID, plain}
		if ones[0] > ones[1] {
			ones[0], ones[1] = ones[1], ones[0]
		}
		want := []string{big, knock, ones[0], ones[1]}

		// GET needs no access token.
		r := s.MustOK("GET", "/_matrix/client/v3/publicRooms", "", nil)
		if got := roomIDsOf(r); !slices.Equal(got, want) {
			t.Fatalf("order: got %v, want %v: %s", got, want, r)
		}
		if r.Get("total_room_count_estimate").Int() != 4 || r.Get("next_batch").Exists() || r.Get("prev_batch").Exists() {
			t.Fatalf("one page: %s", r)
		}
		first := r.Get("chunk.0")
		if first.Get("name").String() != "Big Room" || first.Get("topic").String() != "Cheese talk" ||
			first.Get("canonical_alias").String() != "#big:localhost" || first.Get("num_joined_members").Int() != 3 ||
			!first.Get("world_readable").Bool() || !first.Get("guest_can_join").Bool() ||
			first.Get("avatar_url").String() != "mxc://localhost/abc" || first.Get("join_rule").String() != "public" ||
			first.Get("room_type").Exists() {
			t.Fatalf("big room: %s", first.Raw)
		}
		second := r.Get("chunk.1")
		if second.Get("topic").String() != "Knock first" || second.Get("join_rule").String() != "knock" ||
			second.Get("num_joined_members").Int() != 2 || second.Get("world_readable").Bool() || second.Get("guest_can_join").Bool() ||
			second.Get("canonical_alias").Exists() || second.Get("avatar_url").Exists() {
			t.Fatalf("knock room: %s", second.Raw)
		}
		for _, c := range r.Get("chunk").Array() {
			if c.Get("room_id").String() == spaceID && c.Get("room_type").String() != "m.space" {
				t.Fatalf("space: %s", c.Raw)
			}
		}

		// Paging forward one room at a time sees each room once, and
		// paging back from the end returns the same pages.
		var seen []string
		var tokens, nexts []string
		since := ""
		for i := 0; ; i++ {
			if i > 5 {
				t.Fatal("paging does not end")
			}
			r := s.MustOK("GET", "/_matrix/client/v3/publicRooms?limit=1&since="+url.QueryEscape(since), "", nil)
			seen = append(seen, roomIDsOf(r)...)
			if (since == "") == r.Get("prev_batch").Exists() {
				t.Fatalf("prev_batch on page %d: %s", i, r)
			}
			tokens = append(tokens, r.Get("prev_batch").String())
			if !r.Get("next_batch").Exists() {
				break
			}
			since = r.Get("next_batch").String()
			nexts = append(nexts, since)
		}
		if !slices.Equal(seen, want) {
			t.Fatalf("paged: got %v, want %v", seen, want)
		}
		back := s.MustOK("GET", "/_matrix/client/v3/publicRooms?limit=2&since="+url.QueryEscape(tokens[3]), "", nil)
		if got := roomIDsOf(back); !slices.Equal(got, want[1:3]) || !back.Get("next_batch").Exists() || !back.Get("prev_batch").Exists() {
			t.Fatalf("back from the last page: got %v: %s", got, back)
		}
		back = s.MustOK("GET", "/_matrix/client/v3/publicRooms?limit=2&since="+url.QueryEscape(back.Get("prev_batch").String()), "", nil)
		if got := roomIDsOf(back); !slices.Equal(got, want[:1]) || back.Get("prev_batch").Exists() {
			t.Fatalf("back to the start: got %v: %s", got, back)
		}
		// POST takes the token in its body.
		r = s.MustOK("POST", "/_matrix/client/v3/publicRooms", alice.AccessToken, map[string]any{"limit": 2, "since": nexts[0]})
		if got := roomIDsOf(r); !slices.Equal(got, want[1:3]) {
			t.Fatalf("POST page: got %v: %s", got, r)
		}

		// Bad input.
		for _, bad := range []string{"garbage!", "bm9wZQ", url.QueryEscape("bjE6bm9wZQ")} {
			s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/publicRooms?since="+bad, "", nil)
		}
		s.ExpectError(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/publicRooms", alice.AccessToken, map[string]any{"since": "garbage"})
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/publicRooms?limit=ten", "", nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/publicRooms?limit=-1", "", nil)
		s.ExpectError(400, "M_BAD_JSON", "POST", "/_matrix/client/v3/publicRooms", alice.AccessToken, map[string]any{"limit": "ten"})
		s.ExpectError(400, "M_NOT_JSON", "POST", "/_matrix/client/v3/publicRooms", alice.AccessToken, "[]")
		s.ExpectError(401, "M_MISSING_TOKEN", "POST", "/_matrix/client/v3/publicRooms", "", map[string]any{})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/publicRooms", alice.AccessToken,
			map[string]any{"include_all_networks": true, "third_party_instance_id": "irc"})
		// Another server's directory is asked over federation; one that
		// cannot be reached is a gateway error.
		s.ExpectError(502, "M_UNKNOWN", "GET", "/_matrix/client/v3/publicRooms?server=elsewhere.example", "", nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/publicRooms?server=bad_server!", "", nil)
		s.MustOK("GET", "/_matrix/client/v3/publicRooms?server=localhost", "", nil)

		// Filters.
		filtered := func(body map[string]any) []string {
			t.Helper()
			return roomIDsOf(s.MustOK("POST", "/_matrix/client/v3/publicRooms", alice.AccessToken, body))
		}
		if got := filtered(map[string]any{"filter": map[string]any{"generic_search_term": "CHEESE"}}); !slices.Equal(got, []string{big}) {
			t.Fatalf("search topic: %v", got)
		}
		if got := filtered(map[string]any{"filter": map[string]any{"generic_search_term": "knockers"}}); !slices.Equal(got, []string{knock}) {
			t.Fatalf("search name: %v", got)
		}
		if got := filtered(map[string]any{"filter": map[string]any{"generic_search_term": "#BIG:"}}); !slices.Equal(got, []string{big}) {
			t.Fatalf("search alias: %v", got)
		}
		if got := filtered(map[string]any{"filter": map[string]any{"room_types": []any{"m.space"}}}); !slices.Equal(got, []string{spaceID}) {
			t.Fatalf("spaces: %v", got)
		}
		if got := filtered(map[string]any{"filter": map[string]any{"room_types": []any{nil}}}); len(got) != 3 || slices.Contains(got, spaceID) {
			t.Fatalf("untyped rooms: %v", got)
		}
		if got := filtered(map[string]any{"include_all_networks": true}); !slices.Equal(got, want) {
			t.Fatalf("all networks: %v", got)
		}
		// There are no third-party networks.
		if r := s.MustOK("POST", "/_matrix/client/v3/publicRooms", alice.AccessToken, map[string]any{"third_party_instance_id": "irc"}); r.Get("chunk").Raw != "[]" {
			t.Fatalf("third-party network: %s", r)
		}
	})
}

func TestDirectoryRefusesGuests(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	alice := s.Register("alice", "pw")
	roomID := dirCreateRoom(t, s, alice, "11")
	s.MustOK("PUT", aliasPath("#room:localhost"), alice.AccessToken, map[string]string{"room_id": roomID})
	guest := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{}).Get("access_token").String()
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "PUT", aliasPath("#guest:localhost"), guest, map[string]string{"room_id": roomID})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "DELETE", aliasPath("#room:localhost"), guest, nil)
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "PUT", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(roomID), guest, map[string]string{"visibility": "public"})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", upgradePath(roomID), guest, map[string]string{"new_version": "12"})
	// Reading the directory is fine.
	s.MustOK("POST", "/_matrix/client/v3/publicRooms", guest, map[string]any{})
}

func roomIDsOf(r *testserver.Response) []string {
	var ids []string
	for _, c := range r.Get("chunk").Array() {
		ids = append(ids, c.Get("room_id").String())
	}
	return ids
}
