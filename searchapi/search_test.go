package searchapi_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestSearchKeysOrderingAndPaging(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		roomID := createRoom(t, s, alice, map[string]any{"preset": "private_chat", "name": "Zephyr lounge", "topic": "quasar discussions"})
		dense := say(t, s, alice, roomID, "martian martian martian")
		sparse := say(t, s, alice, roomID, "yesterday a single martian walked past the old mill by the river")
		say(t, s, alice, roomID, "nothing to see")
		var comets []string
		for i := 0; i < 5; i++ {
			comets = append(comets, say(t, s, alice, roomID, "comet sighting"))
		}

		// Rank: the denser match first; recent: the newer one first.
		r := searchUntil(t, s, alice, "martian", nil, "two martian results", resultCount(2))
		if ids := resultIDs(r); ids[0] != dense || ids[1] != sparse {
			t.Fatalf("rank order: %v, want dense %s first", ids, dense)
		}
		if r.Get("results.0.rank").Float() < r.Get("results.1.rank").Float() {
			t.Fatalf("ranks not descending: %s", r.Raw)
		}
		if r.Get("count").Int() != 2 || !slices.Contains(stringsOf(r.Get("highlights")), "martian") {
			t.Fatalf("count or highlights: %s", r.Raw)
		}
		r = search(t, s, alice, "martian", map[string]any{"order_by": "recent"}, "")
		if ids := resultIDs(r); len(ids) != 2 || ids[0] != sparse {
			t.Fatalf("recent order: %v", ids)
		}
		if r.Get("results.0.result.content.body").String() == "" || r.Get("results.0.result.room_id").String() != roomID {
			t.Fatalf("result event: %s", r.Raw)
		}

		// Keys: the room name and topic are found by default and by their key only.
		if len(resultIDs(search(t, s, alice, "zephyr", nil, ""))) != 1 ||
			len(resultIDs(search(t, s, alice, "zephyr", map[string]any{"keys": []string{"content.name"}}, ""))) != 1 ||
			len(resultIDs(search(t, s, alice, "zephyr", map[string]any{"keys": []string{"content.body", "content.topic"}}, ""))) != 0 {
			t.Fatal("content.name key not respected")
		}
		if len(resultIDs(search(t, s, alice, "quasar", map[string]any{"keys": []string{"content.topic"}}, ""))) != 1 ||
			len(resultIDs(search(t, s, alice, "quasar", map[string]any{"keys": []string{"content.body"}}, ""))) != 0 {
			t.Fatal("content.topic key not respected")
		}
		if n := len(resultIDs(search(t, s, alice, "martian", map[string]any{"keys": []string{"content.name"}}, ""))); n != 0 {
			t.Fatalf("body found under content.name: %d", n)
		}

		// Paging through five matches two at a time, newest first; a
		// message arriving meanwhile does not shift the pages.
		var seen []string
		next := ""
		for page := 0; ; page++ {
			r := search(t, s, alice, "comet", map[string]any{"filter": map[string]any{"limit": 2}, "order_by": "recent"}, next)
			if page == 0 && r.Get("count").Int() != 5 {
				t.Fatalf("count: %s", r.Raw)
			}
			seen = append(seen, resultIDs(r)...)
			next = r.Get("next_batch").String()
			if page == 0 {
				late := say(t, s, alice, roomID, "comet late")
				searchUntil(t, s, alice, "late", nil, "the late comet", hasResult(late))
			}
			if next == "" {
				break
			}
			if page > 5 {
				t.Fatal("paging does not end")
			}
		}
		want := slices.Clone(comets)
		slices.Reverse(want)
		if !slices.Equal(seen, want) {
			t.Fatalf("paged results %v, want %v", seen, want)
		}
		// By rank: every match once (six now).
		seen, next = nil, ""
		for page := 0; page < 10; page++ {
			r := search(t, s, alice, "comet", map[string]any{"filter": map[string]any{"limit": 4}}, next)
			seen = append(seen, resultIDs(r)...)
			if next = r.Get("next_batch").String(); next == "" {
				break
			}
		}
		if len(seen) != 6 || len(slices.Compact(slices.Sorted(slices.Values(seen)))) != 6 {
			t.Fatalf("rank paging: %v", seen)
		}
		// A token of one ordering does not fit the other.
		first := search(t, s, alice, "comet", map[string]any{"filter": map[string]any{"limit": 1}}, "")
		s.ExpectError(400, "M_INVALID_PARAM", "POST", "/_matrix/client/v3/search?next_batch="+first.Get("next_batch").String(), alice.AccessToken,
			map[string]any{"search_categories": map[string]any{"room_events": map[string]any{"search_term": "comet", "order_by": "recent"}}})

		// Filters: senders, types and rooms.
		if n := len(resultIDs(search(t, s, alice, "comet", map[string]any{"filter": map[string]any{"senders": []string{"@nobody:localhost"}}}, ""))); n != 0 {
			t.Fatalf("senders filter: %d results", n)
		}
		if n := len(resultIDs(search(t, s, alice, "comet", map[string]any{"filter": map[string]any{"not_types": []string{"m.room.*"}}}, ""))); n != 0 {
			t.Fatalf("not_types filter: %d results", n)
		}
		if n := len(resultIDs(search(t, s, alice, "comet", map[string]any{"filter": map[string]any{"not_rooms": []string{roomID}}}, ""))); n != 0 {
			t.Fatalf("not_rooms filter: %d results", n)
		}
		if n := len(resultIDs(search(t, s, alice, "comet", map[string]any{"filter": map[string]any{"rooms": []string{roomID}, "types": []string{"m.room.message"}}}, ""))); n != 6 {
			t.Fatalf("rooms and types filter: %d results", n)
		}
	})
}

func TestSearchContextStateAndGroups(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		s.MustOK("PUT", "/_matrix/client/v3/profile/"+alice.UserID+"/displayname", alice.AccessToken, map[string]any{"displayname": "Alice Liddell"})
		roomID := createRoom(t, s, alice, map[string]any{"preset": "public_chat"})
		other := createRoom(t, s, bob, map[string]any{"preset": "public_chat"})
		join(t, s, bob, roomID)
		join(t, s, alice, other)
		before := say(t, s, bob, roomID, "warm up")
		hitID := say(t, s, alice, roomID, "the harbour lighthouse")
		after := say(t, s, bob, roomID, "cool down")
		otherHit := say(t, s, bob, other, "another lighthouse")
		searchUntil(t, s, alice, "lighthouse", nil, "both lighthouses", resultCount(2))

		r := search(t, s, alice, "harbour", map[string]any{
			"event_context": map[string]any{"before_limit": 1, "after_limit": 1, "include_profile": true},
			"include_state": true,
		}, "")
		c := r.Get("results.0.context")
		if r.Get("results.0.result.event_id").String() != hitID || c.Get("events_before.#").Int() != 1 ||
			c.Get("events_before.0.event_id").String() != before || c.Get("events_after.0.event_id").String() != after {
			t.Fatalf("context: %s", r.Raw)
		}
		if c.Get("start").String() == "" || c.Get("end").String() == "" {
			t.Fatalf("context tokens: %s", c.Raw)
		}
		if got := c.Get("profile_info." + gjson.Escape(alice.UserID) + ".displayname").String(); got != "Alice Liddell" {
			t.Fatalf("profile_info of alice: %q in %s", got, c.Raw)
		}
		if !c.Get("profile_info." + gjson.Escape(bob.UserID)).Exists() {
			t.Fatalf("profile_info of the context's sender bob: %s", c.Raw)
		}
		// The context tokens page on with /messages.
		s.MustOK("GET", "/_matrix/client/v3/rooms/"+roomID+"/messages?dir=b&limit=1&from="+c.Get("start").String(), alice.AccessToken, nil)
		state := r.Get("state." + gjson.Escape(roomID))
		if !state.Get("#(type==m.room.create)").Exists() || !state.Get("#(state_key=="+bob.UserID+")").Exists() {
			t.Fatalf("include_state: %s", r.Get("state").Raw)
		}
		if search(t, s, alice, "harbour", nil, "").Get("state").Exists() {
			t.Fatal("state without include_state")
		}

		g := search(t, s, alice, "lighthouse", map[string]any{"groupings": map[string]any{"group_by": []map[string]any{{"key": "room_id"}, {"key": "sender"}}}}, "")
		byRoom := g.Get("groups.room_id")
		if byRoom.Get(gjson.Escape(roomID)+".results.0").String() != hitID || byRoom.Get(gjson.Escape(other)+".results.0").String() != otherHit ||
			!byRoom.Get(gjson.Escape(roomID)+".order").Exists() {
			t.Fatalf("room groups: %s", g.Raw)
		}
		if g.Get("groups.sender."+gjson.Escape(bob.UserID)+".results.0").String() != otherHit {
			t.Fatalf("sender groups: %s", g.Raw)
		}
	})
}

func TestSearchBadRequests(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := createRoom(t, s, alice, map[string]any{"preset": "private_chat"})
	marker := say(t, s, alice, roomID, "ready marker")
	searchUntil(t, s, alice, "marker", nil, "the marker", hasResult(marker))
	const path = "/_matrix/client/v3/search"
	re := func(criteria map[string]any) map[string]any {
		return map[string]any{"search_categories": map[string]any{"room_events": criteria}}
	}
	s.ExpectError(400, "M_NOT_JSON", "POST", path, alice.AccessToken, "nope")
	s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, map[string]any{})
	s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, re(map[string]any{}))
	s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, re(map[string]any{"search_term": 3}))
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, re(map[string]any{"search_term": "x", "order_by": "size"}))
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, re(map[string]any{"search_term": "x", "keys": []string{"content.url"}}))
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, re(map[string]any{"search_term": "x",
		"groupings": map[string]any{"group_by": []map[string]any{{"key": "type"}}}}))
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, re(map[string]any{"search_term": "x",
		"event_context": map[string]any{"before_limit": -1}}))
	s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, re(map[string]any{"search_term": "x", "filter": map[string]any{"limit": "ten"}}))
	long := make([]byte, 1001)
	for i := range long {
		long[i] = 'a'
	}
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path, alice.AccessToken, re(map[string]any{"search_term": string(long)}))
	s.ExpectError(400, "M_INVALID_PARAM", "POST", path+"?next_batch=garbage", alice.AccessToken, re(map[string]any{"search_term": "x"}))
	s.ExpectError(401, "M_MISSING_TOKEN", "POST", path, "", re(map[string]any{"search_term": "x"}))

	// Unknown categories are ignored.
	r := s.MustOK("POST", path, alice.AccessToken, map[string]any{"search_categories": map[string]any{"unknown": map[string]any{}}})
	if r.Get("search_categories").Raw != "{}" {
		t.Fatalf("unknown category: %s", r.Body)
	}
	// Query syntax in the term is taken as words, never as an error.
	for _, term := range []string{`"`, `marker"`, `*`, `mark*`, `NEAR(ready marker)`, `-marker`, `ready OR marker`, `ready AND NOT`,
		`text:marker`, `^marker`, `(marker`, `'marker'`, `marker & ready | x`, `!ready`, `""`, ` `, `💥`} {
		r := search(t, s, alice, term, nil, "")
		if !r.Get("results").IsArray() {
			t.Fatalf("term %q: %s", term, r.Raw)
		}
	}
	if !hasResult(marker)(search(t, s, alice, `"ready" -marker*`, nil, "")) {
		t.Fatal("punctuation around words should not stop a match")
	}
}

func stringsOf(r gjson.Result) []string {
	var out []string
	for _, x := range r.Array() {
		out = append(out, x.String())
	}
	return out
}

// A message is found by a search made right after it was sent, without
// retrying: the search waits for the indexer, which otherwise gathers
// events for a moment before it indexes them.
func TestSearchFindsWhatWasJustSent(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		roomID := createRoom(t, s, alice, map[string]any{"preset": "private_chat"})
		for i := range 5 {
			id := say(t, s, alice, roomID, fmt.Sprintf("quokka number %d", i))
			r := search(t, s, alice, fmt.Sprintf("quokka %d", i), nil, "")
			if !hasResult(id)(r) {
				t.Fatalf("message %d not found right after it was sent: %s", i, r.Raw)
			}
		}
	})
}
