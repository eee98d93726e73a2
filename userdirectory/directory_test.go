package userdirectory_test

import (
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func createRoom(t *testing.T, s *testserver.Server, u *testserver.User, preset string) string {
	t.Helper()
	return s.MustOK("POST", "/_matrix/client/v3/createRoom", u.AccessToken, map[string]any{"preset": preset}).Get("room_id").String()
}

func join(t *testing.T, s *testserver.Server, u *testserver.User, roomID string) {
	t.Helper()
	s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), u.AccessToken, map[string]any{})
}

func invite(t *testing.T, s *testserver.Server, by *testserver.User, roomID, userID string) {
	t.Helper()
	s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", by.AccessToken, map[string]any{"user_id": userID})
}

func setName(t *testing.T, s *testserver.Server, u *testserver.User, name string) {
	t.Helper()
	s.MustOK("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(u.UserID)+"/displayname", u.AccessToken, map[string]any{"displayname": name})
}

func lookup(t *testing.T, s *testserver.Server, u *testserver.User, term string, limit int) gjson.Result {
	t.Helper()
	body := map[string]any{"search_term": term}
	if limit > 0 {
		body["limit"] = limit
	}
	return s.MustOK("POST", "/_matrix/client/v3/user_directory/search", u.AccessToken, body).JSON()
}

func ids(r gjson.Result) []string {
	var out []string
	for _, x := range r.Get("results.#.user_id").Array() {
		out = append(out, x.String())
	}
	return out
}

// lookupUntil repeats a search until cond holds: the directory follows the
// room stream asynchronously.
func lookupUntil(t *testing.T, s *testserver.Server, u *testserver.User, term, what string, cond func([]string, gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := lookup(t, s, u, term, 0)
		if cond(ids(r), r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("directory search %q: %s never happened; last %s", term, what, r.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func finds(userID string) func([]string, gjson.Result) bool {
	return func(ids []string, _ gjson.Result) bool { return slices.Contains(ids, userID) }
}

func lacks(userID string) func([]string, gjson.Result) bool {
	return func(ids []string, _ gjson.Result) bool { return !slices.Contains(ids, userID) }
}

func TestUserDirectoryVisibility(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		dave := s.Register("dave", "pw")
		setName(t, s, bob, "Robert Tables")
		setName(t, s, carol, "Carol Public")

		// Bob shares a private room with alice; carol is in a public room
		// alice is not in; dave is in a private room with carol only.
		shared := createRoom(t, s, alice, "private_chat")
		invite(t, s, alice, shared, bob.UserID)
		join(t, s, bob, shared)
		public := createRoom(t, s, carol, "public_chat")
		hidden := createRoom(t, s, carol, "private_chat")
		invite(t, s, carol, hidden, dave.UserID)
		join(t, s, dave, hidden)
		setName(t, s, dave, "Dave Hidden")

		// Prefix matches on display name words and the localpart, any case.
		r := lookupUntil(t, s, alice, "tab", "bob by a display name word", finds(bob.UserID))
		if r.Get("results.0.display_name").String() != "Robert Tables" || r.Get("limited").Bool() {
			t.Fatalf("bob's result: %s", r.Raw)
		}
		lookupUntil(t, s, alice, "ROB", "bob by the first word in upper case", finds(bob.UserID))
		lookupUntil(t, s, alice, "bo", "bob by localpart", finds(bob.UserID))
		lookupUntil(t, s, alice, "@bob:localhost", "bob by user ID", finds(bob.UserID))
		lookupUntil(t, s, alice, "robert tab", "bob by two words", finds(bob.UserID))
		if got := ids(lookup(t, s, alice, "robert zzz", 0)); len(got) != 0 {
			t.Fatalf("a word nobody has still matched: %v", got)
		}
		if got := ids(lookup(t, s, alice, "obert", 0)); len(got) != 0 {
			t.Fatalf("a match inside a word: %v", got)
		}
		// Users of public rooms are visible to all.
		lookupUntil(t, s, alice, "carol", "carol of a public room", finds(carol.UserID))
		// Strangers in private rooms are not; dave's room-mate carol sees him.
		lookupUntil(t, s, carol, "dave", "dave for carol", finds(dave.UserID))
		if got := ids(lookup(t, s, alice, "dave", 0)); len(got) != 0 {
			t.Fatalf("alice finds a stranger in a private room: %v", got)
		}
		if got := ids(lookup(t, s, alice, "hidden", 0)); len(got) != 0 {
			t.Fatalf("alice finds a stranger by display name: %v", got)
		}
		// Dave, in a private room only, does not find himself either.
		if got := ids(lookup(t, s, dave, "dave", 0)); len(got) != 0 {
			t.Fatalf("dave finds himself through a private room: %v", got)
		}

		// A display name change is reflected.
		setName(t, s, bob, "Bobby Drop")
		lookupUntil(t, s, alice, "drop", "bob's new name", finds(bob.UserID))
		lookupUntil(t, s, alice, "tables", "bob's old name to go", lacks(bob.UserID))

		// Leaving the only shared room hides bob again.
		s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(shared)+"/leave", bob.AccessToken, map[string]any{})
		lookupUntil(t, s, alice, "bob", "bob after leaving", lacks(bob.UserID))
		// Joining the public room shows him to everyone.
		join(t, s, bob, public)
		lookupUntil(t, s, dave, "bob", "bob in a public room", finds(bob.UserID))
		// A room that turns private hides its members from strangers.
		s.MustOK("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(public)+"/state/m.room.join_rules/", carol.AccessToken,
			map[string]any{"join_rule": "invite"})
		lookupUntil(t, s, alice, "carol", "carol after her room became private", lacks(carol.UserID))

		// What the directory knows survives a restart.
		s.Restart()
		if got := ids(lookup(t, s, carol, "bobby", 0)); !slices.Equal(got, []string{bob.UserID}) {
			t.Fatalf("after restart: %v", got)
		}
	})
}

func TestUserDirectoryLimitAndErrors(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	host := s.Register("host", "pw")
	room := createRoom(t, s, host, "public_chat") // alice is not in it
	var users []string
	for _, name := range []string{"member1", "member2", "member3", "member4"} {
		u := s.Register(name, "pw")
		join(t, s, u, room)
		users = append(users, u.UserID)
	}
	lookupUntil(t, s, alice, "member", "all four members", func(ids []string, _ gjson.Result) bool { return len(ids) == 4 })
	r := lookup(t, s, alice, "member", 3)
	if len(ids(r)) != 3 || !r.Get("limited").Bool() {
		t.Fatalf("limit 3 of 4: %s", r.Raw)
	}
	r = lookup(t, s, alice, "member", 4)
	if len(ids(r)) != 4 || r.Get("limited").Bool() {
		t.Fatalf("limit 4 of 4: %s", r.Raw)
	}
	if !slices.Equal(ids(r), users) {
		t.Fatalf("order: %v, want %v", ids(r), users)
	}
	// Shared-room users rank first.
	private := createRoom(t, s, alice, "private_chat")
	m4 := s.Login("member4", "pw")
	invite(t, s, alice, private, m4.UserID)
	join(t, s, m4, private)
	lookupUntil(t, s, alice, "member", "member4 first", func(ids []string, _ gjson.Result) bool {
		return len(ids) == 4 && ids[0] == m4.UserID
	})

	const path = "/_matrix/client/v3/user_directory/search"
	s.ExpectError(400, "M_NOT_JSON", "POST", path, alice.AccessToken, "x")
	s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, map[string]any{})
	s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, map[string]any{"search_term": 1})
	s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, map[string]any{"search_term": "a", "limit": "3"})
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, map[string]any{"search_term": "a", "limit": -1})
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'a'
	}
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, map[string]any{"search_term": string(long)})
	s.ExpectError(401, "M_MISSING_TOKEN", "POST", path, "", map[string]any{"search_term": "a"})
	for _, term := range []string{"", "%", "_", "%ember", "_ember", "m_mber", "'", `\`, "@", "💥"} {
		r := lookup(t, s, alice, term, 0)
		if !r.Get("results").IsArray() || len(ids(r)) != 0 {
			t.Fatalf("term %q: %s", term, r.Raw)
		}
	}
	if got := len(ids(lookup(t, s, alice, "member", 1000))); got != 4 {
		t.Fatalf("a huge limit: %d results", got)
	}
}

func TestUserDirectorySearchAllUsers(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		loner := s.Register("loner", "pw")
		setName(t, s, loner, "Solitary Sam")
		// Marker: wait until the directory has caught up with a room.
		room := createRoom(t, s, alice, "public_chat")
		_ = room
		lookupUntil(t, s, loner, "alice", "alice in her public room", finds(alice.UserID))
		if got := ids(lookup(t, s, alice, "loner", 0)); len(got) != 0 {
			t.Fatalf("without search_all_users a user in no room is found: %v", got)
		}
	})
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		loner := s.Register("loner", "pw")
		setName(t, s, loner, "Solitary Sam")
		r := lookup(t, s, alice, "sam", 0)
		if got := ids(r); len(got) != 1 || got[0] != loner.UserID || r.Get("results.0.display_name").String() != "Solitary Sam" {
			t.Fatalf("search_all_users by display name: %s", r.Raw)
		}
		if got := ids(lookup(t, s, alice, "lon", 0)); len(got) != 1 || got[0] != loner.UserID {
			t.Fatalf("search_all_users by localpart: %v", got)
		}
		if got := ids(lookup(t, s, alice, "nobody", 0)); len(got) != 0 {
			t.Fatalf("search_all_users without a match: %v", got)
		}
	}, func(c *config.Config) { c.UserDirectory.SearchAllUsers = true })
}

func TestUserDirectoryRemoteUsers(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "pw")
	bob := b.Register("bob", "pw")
	setName(t, b, bob, "Remote Robin")
	room := createRoom(t, a, alice, "public_chat")
	b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{})
	r := lookupUntil(t, a, alice, "robin", "the remote user", finds(bob.UserID))
	if r.Get("results.0.display_name").String() != "Remote Robin" {
		t.Fatalf("remote profile: %s", r.Raw)
	}
	// The remote user's display name change reaches the directory too.
	setName(t, b, bob, "Renamed Rowan")
	lookupUntil(t, a, alice, "rowan", "the remote user's new name", finds(bob.UserID))
	// And the other way: bob's server knows alice from the join.
	lookupUntil(t, b, bob, "alice", "alice on bob's server", finds(alice.UserID))
	// Once bob's server has left the room, what it knew of it is stale:
	// alice is no longer shown there, public room or not.
	b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", bob.AccessToken, map[string]any{})
	lookupUntil(t, b, bob, "alice", "alice to go after bob's server left", lacks(alice.UserID))
	lookupUntil(t, a, alice, "rowan", "bob to go after he left", lacks(bob.UserID))
}
