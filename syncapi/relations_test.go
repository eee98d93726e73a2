package syncapi_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/syncapi"
)

var txnCounter atomic.Int64

// send sends an event through the client API and returns its ID.
func send(t *testing.T, s *testserver.Server, u *testserver.User, roomID, evType string, content any) string {
	t.Helper()
	path := roomPath(roomID, fmt.Sprintf("/send/%s/t%d", url.PathEscape(evType), txnCounter.Add(1)))
	return s.MustOK("PUT", path, u.AccessToken, content).Get("event_id").String()
}

func text(body string) map[string]any { return map[string]any{"msgtype": "m.text", "body": body} }

// related is a message with a relation to parent.
func related(body, relType, parent string) map[string]any {
	c := text(body)
	c["m.relates_to"] = map[string]any{"rel_type": relType, "event_id": parent}
	return c
}

// editOf is a valid replacement of parent.
func editOf(parent, body string) map[string]any {
	c := related("* "+body, "m.replace", parent)
	c["m.new_content"] = text(body)
	return c
}

func relationsPath(roomID, eventID string, rest ...string) string {
	p := "/_matrix/client/v1/rooms/" + url.PathEscape(roomID) + "/relations/" + url.PathEscape(eventID)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// waitSeen waits until the sync API has consumed an event (it shows in
// /messages), so reads that follow see it.
func waitSeen(t *testing.T, s *testserver.Server, u *testserver.User, roomID, eventID string) {
	t.Helper()
	syncUntil(t, s, u, "", `&filter={"room":{"timeline":{"limit":1}}}`, func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + eventID + ")").Exists()
	})
}

// ids lists the event IDs of a chunk.
func ids(chunk gjson.Result) string {
	var out []string
	for _, e := range chunk.Array() {
		out = append(out, e.Get("event_id").String())
	}
	return strings.Join(out, ",")
}

func list(ids ...string) string { return strings.Join(ids, ",") }

func TestRelationsEndpoint(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		roomID := createRoom(t, s, alice.UserID)
		joinRoom(t, s, bob, roomID)

		root := send(t, s, alice, roomID, "m.room.message", text("root"))
		r1 := send(t, s, bob, roomID, "m.room.message", related("one", "m.thread", root))
		r2 := send(t, s, alice, roomID, "m.room.message", related("two", "m.thread", root))
		e1 := send(t, s, alice, roomID, "m.room.message", editOf(root, "root edited"))
		ref := send(t, s, bob, roomID, "m.room.message", related("see", "m.reference", root))
		// Indirect children: a reaction to r1, and a reference to that.
		reaction := send(t, s, alice, roomID, "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": r1, "key": "👍"}})
		deep := send(t, s, bob, roomID, "m.room.message", related("deep", "m.reference", reaction))
		waitSeen(t, s, alice, roomID, deep)

		get := func(u *testserver.User, path string) gjson.Result {
			return s.MustOK("GET", path, u.AccessToken, nil).JSON()
		}
		expect := func(what string, r gjson.Result, want string) {
			t.Helper()
			if got := ids(r.Get("chunk")); got != want {
				t.Fatalf("%s: got %s, want %s (%s)", what, got, want, r.Raw)
			}
		}

		// Direct children, newest first by default; the filter forms.
		all := get(bob, relationsPath(roomID, root))
		expect("all", all, list(ref, e1, r2, r1))
		if all.Get("next_batch").Exists() || all.Get("prev_batch").Exists() || all.Get("recursion_depth").Exists() {
			t.Fatalf("one page has no tokens and no recursion depth: %s", all.Raw)
		}
		if all.Get("chunk.0.content.body").String() != "see" || all.Get("chunk.0.room_id").String() != roomID {
			t.Fatalf("children are served as client events: %s", all.Raw)
		}
		expect("m.thread", get(bob, relationsPath(roomID, root, "m.thread")), list(r2, r1))
		expect("m.thread + type", get(bob, relationsPath(roomID, root, "m.thread", "m.room.message")), list(r2, r1))
		expect("m.thread + other type", get(bob, relationsPath(roomID, root, "m.thread", "m.reaction")), "")
		expect("m.annotation of r1", get(bob, relationsPath(roomID, r1, "m.annotation", "m.reaction")), reaction)

		// Pagination backwards with tokens, then forwards.
		p1 := get(bob, relationsPath(roomID, root)+"?limit=2")
		expect("page 1", p1, list(ref, e1))
		next := p1.Get("next_batch").String()
		if next == "" {
			t.Fatalf("no next_batch with more to come: %s", p1.Raw)
		}
		p2 := get(bob, relationsPath(roomID, root)+"?limit=2&from="+url.QueryEscape(next))
		expect("page 2", p2, list(r2, r1))
		if p2.Get("next_batch").Exists() || p2.Get("prev_batch").String() != next {
			t.Fatalf("last page tokens: %s", p2.Raw)
		}
		f1 := get(bob, relationsPath(roomID, root)+"?dir=f&limit=3")
		expect("forwards 1", f1, list(r1, r2, e1))
		f2 := get(bob, relationsPath(roomID, root)+"?dir=f&limit=3&from="+url.QueryEscape(f1.Get("next_batch").String()))
		expect("forwards 2", f2, ref)
		// to stops the page: forwards up to where the first backwards page began.
		first := get(bob, relationsPath(roomID, root)+"?limit=1")
		expect("first", first, ref)
		expect("forwards to", get(bob, relationsPath(roomID, root)+"?dir=f&to="+url.QueryEscape(first.Get("next_batch").String())), list(r1, r2, e1))
		// A /messages token is a valid from.
		msgs := get(bob, roomPath(roomID, "/messages?dir=b&limit=3"))
		// (the last three events were deep, reaction and ref)
		expect("from /messages end", get(bob, relationsPath(roomID, root)+"?from="+url.QueryEscape(msgs.Get("end").String())), list(e1, r2, r1))

		// Recursion follows matching children only.
		rec := get(bob, relationsPath(roomID, root)+"?recurse=true&limit=10")
		expect("recurse", rec, list(deep, reaction, ref, e1, r2, r1))
		if rec.Get("recursion_depth").Int() < 3 {
			t.Fatalf("recursion_depth: %s", rec.Raw)
		}
		expect("recurse m.thread", get(bob, relationsPath(roomID, root, "m.thread")+"?recurse=true"), list(r2, r1))
		expect("recurse m.reference", get(bob, relationsPath(roomID, root, "m.reference")+"?recurse=true"), ref)
		if d := get(bob, relationsPath(roomID, root)+"?recurse=false"); d.Get("recursion_depth").Int() != 1 || ids(d.Get("chunk")) != list(ref, e1, r2, r1) {
			t.Fatalf("recurse=false: %s", d.Raw)
		}

		// A thread cannot start from an event that relates to another.
		s.ExpectError(400, "M_UNKNOWN", "PUT", roomPath(roomID, "/send/m.room.message/nested"), bob.AccessToken, related("nested", "m.thread", r1))

		// Bad input and events the user cannot see.
		s.ExpectError(400, "M_INVALID_PARAM", "GET", relationsPath(roomID, root)+"?dir=x", bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", relationsPath(roomID, root)+"?limit=-1", bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", relationsPath(roomID, root)+"?recurse=yes", bob.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", relationsPath(roomID, root)+"?from=nonsense", bob.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", relationsPath(roomID, "$unknown"), bob.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", relationsPath(roomID, root), carol.AccessToken, nil)
		other := createRoom(t, s, carol.UserID)
		s.ExpectError(404, "M_NOT_FOUND", "GET", relationsPath(other, root), bob.AccessToken, nil)
		s.ExpectError(401, "M_MISSING_TOKEN", "GET", relationsPath(roomID, root), "", nil)

		// In a room whose history is for members only since they joined, a
		// newcomer sees neither the earlier parent nor its children, and
		// later children of an event they can see only when visible.
		private := createRoom(t, s, alice.UserID)
		hv := ""
		sendEvent(t, s, private, alice.UserID, "m.room.history_visibility", &hv, map[string]string{"history_visibility": "joined"})
		early := send(t, s, alice, private, "m.room.message", text("before carol"))
		earlyReply := send(t, s, alice, private, "m.room.message", related("reply before carol", "m.thread", early))
		joinRoom(t, s, carol, private)
		s.ExpectError(404, "M_NOT_FOUND", "GET", relationsPath(private, early), carol.AccessToken, nil)
		later := send(t, s, alice, private, "m.room.message", text("after carol"))
		hidden := send(t, s, alice, private, "m.room.message", related("reply", "m.reference", later))
		seenReply := send(t, s, alice, private, "m.room.message", related("seen reply", "m.thread", later))
		waitSeen(t, s, carol, private, seenReply)
		expect("visible children", get(carol, relationsPath(private, later)), list(seenReply, hidden))
		expect("alice sees her early thread", get(alice, relationsPath(private, early)), earlyReply)
		// Once carol has left, later children of an event she saw are hidden
		// from her, and from the event's aggregations.
		setMembership(t, s, private, carol.UserID, carol.UserID, "leave")
		afterLeave := send(t, s, alice, private, "m.room.message", related("after carol left", "m.thread", later))
		waitSeen(t, s, alice, private, afterLeave)
		expect("children after leaving", get(carol, relationsPath(private, later)), list(seenReply, hidden))
		expect("alice sees them", get(alice, relationsPath(private, later)), list(afterLeave, seenReply, hidden))
		// The thread's latest reply is the newest carol may see.
		seen := get(carol, roomPath(private, "/event/"+url.PathEscape(later)))
		if seen.Get(`unsigned.m\.relations.m\.thread.latest_event.event_id`).String() != seenReply ||
			seen.Get(`unsigned.m\.relations.m\.reference.chunk.0.event_id`).String() != hidden {
			t.Fatalf("aggregations with hidden children: %s", seen.Raw)
		}
		if got := get(alice, roomPath(private, "/event/"+url.PathEscape(later))).Get(`unsigned.m\.relations.m\.thread.latest_event.event_id`).String(); got != afterLeave {
			t.Fatalf("alice's latest reply: %s", got)
		}
	})
}

func TestBundledAggregations(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		roomID := createRoom(t, s, alice.UserID)
		joinRoom(t, s, bob, roomID)
		joinRoom(t, s, carol, roomID)

		root := send(t, s, alice, roomID, "m.room.message", text("root"))
		t1 := send(t, s, bob, roomID, "m.room.message", related("bob in thread", "m.thread", root))
		t2 := send(t, s, alice, roomID, "m.room.message", related("alice in thread", "m.thread", root))
		e1 := send(t, s, alice, roomID, "m.room.message", editOf(root, "first edit"))
		e2 := send(t, s, alice, roomID, "m.room.message", editOf(root, "second edit"))
		send(t, s, bob, roomID, "m.room.message", editOf(root, "bob may not edit alice")) // another sender: not an edit
		send(t, s, alice, roomID, "m.room.message", related("no new content", "m.replace", root))
		ref := send(t, s, bob, roomID, "m.room.message", related("see above", "m.reference", root))
		t2edit := send(t, s, alice, roomID, "m.room.message", editOf(t2, "alice in thread, edited"))
		waitSeen(t, s, alice, roomID, t2edit)

		// check verifies the root's aggregations as one user sees them.
		check := func(where string, ev gjson.Result, participated bool, edit string) {
			t.Helper()
			rel := ev.Get(`unsigned.m\.relations`)
			th := rel.Get(`m\.thread`)
			if th.Get("count").Int() != 2 || th.Get("latest_event.event_id").String() != t2 || th.Get("current_user_participated").Bool() != participated {
				t.Fatalf("%s: thread aggregation: %s", where, ev.Raw)
			}
			// The latest reply carries its own aggregations (its edit).
			if th.Get(`latest_event.unsigned.m\.relations.m\.replace.event_id`).String() != t2edit || th.Get("latest_event.content.body").String() != "alice in thread" {
				t.Fatalf("%s: latest_event's own aggregation: %s", where, th.Raw)
			}
			if got := rel.Get(`m\.replace.event_id`).String(); got != edit {
				t.Fatalf("%s: m.replace is %s, want %s: %s", where, got, edit, rel.Raw)
			}
			if rel.Get(`m\.replace.content.m\.new_content.body`).String() == "" || rel.Get(`m\.replace.sender`).String() != alice.UserID {
				t.Fatalf("%s: the edit is served as an event: %s", where, rel.Raw)
			}
			if ids(rel.Get(`m\.reference.chunk`)) != ref {
				t.Fatalf("%s: references: %s", where, rel.Raw)
			}
			// The server no longer replaces the original's content.
			if ev.Get("content.body").String() != "root" {
				t.Fatalf("%s: content replaced: %s", where, ev.Raw)
			}
		}
		byID := func(events gjson.Result, id string) gjson.Result {
			t.Helper()
			ev := events.Get("#(event_id==" + id + ")")
			if !ev.Exists() {
				t.Fatalf("%s missing from %s", id, events.Raw)
			}
			return ev
		}
		users := []struct {
			u            *testserver.User
			participated bool
		}{{alice, true}, {bob, true}, {carol, false}}
		for _, c := range users {
			u := c.u
			sync := syncUntil(t, s, u, "", `&filter={"room":{"timeline":{"limit":50}}}`, func(r gjson.Result) bool {
				return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + t2edit + ")").Exists()
			})
			check("/sync for "+u.Localpart, byID(sync.Get("rooms.join."+gjson.Escape(roomID)+".timeline.events"), root), c.participated, e2)
			msgs := s.MustOK("GET", roomPath(roomID, "/messages?dir=b&limit=50"), u.AccessToken, nil).JSON()
			check("/messages for "+u.Localpart, byID(msgs.Get("chunk"), root), c.participated, e2)
			ctx := s.MustOK("GET", roomPath(roomID, "/context/"+url.PathEscape(root)+"?limit=4"), u.AccessToken, nil).JSON()
			check("/context event for "+u.Localpart, ctx.Get("event"), c.participated, e2)
			ev := s.MustOK("GET", roomPath(roomID, "/event/"+url.PathEscape(root)), u.AccessToken, nil).JSON()
			check("/event for "+u.Localpart, ev, c.participated, e2)
		}
		// One /sync aggregates the timelines of all rooms together.
		second := createRoom(t, s, alice.UserID)
		root2 := send(t, s, alice, second, "m.room.message", text("root in the second room"))
		reply2 := send(t, s, alice, second, "m.room.message", related("reply", "m.thread", root2))
		both := syncUntil(t, s, alice, "", `&filter={"room":{"timeline":{"limit":50}}}`, func(r gjson.Result) bool {
			return r.Get("rooms.join." + gjson.Escape(second) + ".timeline.events.#(event_id==" + reply2 + ")").Exists()
		})
		check("/sync with two rooms", byID(both.Get("rooms.join."+gjson.Escape(roomID)+".timeline.events"), root), true, e2)
		if got := byID(both.Get("rooms.join."+gjson.Escape(second)+".timeline.events"), root2).Get(`unsigned.m\.relations.m\.thread.latest_event.event_id`).String(); got != reply2 {
			t.Fatalf("second room's thread: %s", both.Get("rooms.join."+gjson.Escape(second)).Raw)
		}

		// /context's surrounding events and /relations' chunk are aggregated too.
		ctx := s.MustOK("GET", roomPath(roomID, "/context/"+url.PathEscape(t1)+"?limit=10"), bob.AccessToken, nil).JSON()
		check("/context events_before", byID(ctx.Get("events_before"), root), true, e2)
		if byID(ctx.Get("events_after"), t2).Get(`unsigned.m\.relations.m\.replace.event_id`).String() != t2edit {
			t.Fatalf("/context events_after not aggregated: %s", ctx.Get("events_after").Raw)
		}
		thread := s.MustOK("GET", relationsPath(roomID, root, "m.thread"), bob.AccessToken, nil).JSON()
		if byID(thread.Get("chunk"), t2).Get(`unsigned.m\.relations.m\.replace.event_id`).String() != t2edit {
			t.Fatalf("/relations chunk not aggregated: %s", thread.Raw)
		}
		// An event with no children has no m.relations.
		if byID(thread.Get("chunk"), t1).Get(`unsigned.m\.relations`).Exists() {
			t.Fatalf("aggregations on an event without children: %s", thread.Raw)
		}

		// Redacting the latest edit reverts to the one before; redacting the
		// latest thread reply drops it from the count and latest_event.
		s.MustOK("PUT", roomPath(roomID, "/redact/"+url.PathEscape(e2)+"/r1"), alice.AccessToken, map[string]any{})
		s.MustOK("PUT", roomPath(roomID, "/redact/"+url.PathEscape(t2)+"/r2"), alice.AccessToken, map[string]any{})
		redactRef := s.MustOK("PUT", roomPath(roomID, "/redact/"+url.PathEscape(ref)+"/r3"), bob.AccessToken, map[string]any{}).Get("event_id").String()
		waitSeen(t, s, alice, roomID, redactRef)
		ev := s.MustOK("GET", roomPath(roomID, "/event/"+url.PathEscape(root)), carol.AccessToken, nil).JSON()
		rel := ev.Get(`unsigned.m\.relations`)
		if rel.Get(`m\.replace.event_id`).String() != e1 {
			t.Fatalf("after redacting the latest edit: %s", rel.Raw)
		}
		if th := rel.Get(`m\.thread`); th.Get("count").Int() != 1 || th.Get("latest_event.event_id").String() != t1 {
			t.Fatalf("after redacting the latest reply: %s", rel.Raw)
		}
		if rel.Get(`m\.reference`).Exists() {
			t.Fatalf("a redacted reference still aggregated: %s", rel.Raw)
		}
		expectIDs := func(path, want string) {
			t.Helper()
			if got := ids(s.MustOK("GET", path, carol.AccessToken, nil).Get("chunk")); got != want {
				t.Fatalf("%s: %s, want %s", path, got, want)
			}
		}
		expectIDs(relationsPath(roomID, root, "m.thread"), t1)

		// Ignored users' children are left out of the aggregation.
		s.MustOK("PUT", "/_matrix/client/v3/user/"+url.PathEscape(carol.UserID)+"/account_data/m.ignored_user_list", carol.AccessToken,
			map[string]any{"ignored_users": map[string]any{bob.UserID: map[string]any{}}})
		ev = s.MustOK("GET", roomPath(roomID, "/event/"+url.PathEscape(root)), carol.AccessToken, nil).JSON()
		if ev.Get(`unsigned.m\.relations.m\.thread`).Exists() {
			t.Fatalf("an ignored user's thread reply was aggregated: %s", ev.Raw)
		}

		// Redacting the original drops its edits from the bundle, but not
		// its thread.
		red := s.MustOK("PUT", roomPath(roomID, "/redact/"+url.PathEscape(root)+"/r4"), alice.AccessToken, map[string]any{}).Get("event_id").String()
		waitSeen(t, s, alice, roomID, red)
		ev = s.MustOK("GET", roomPath(roomID, "/event/"+url.PathEscape(root)), bob.AccessToken, nil).JSON()
		if ev.Get(`unsigned.m\.relations.m\.replace`).Exists() || !ev.Get(`unsigned.m\.relations.m\.thread`).Exists() {
			t.Fatalf("a redacted original's bundle: %s", ev.Raw)
		}
	})
}

func TestThreadsList(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		dave := s.Register("dave", "pw")
		roomID := createRoom(t, s, alice.UserID)
		joinRoom(t, s, bob, roomID)
		joinRoom(t, s, carol, roomID)

		a := send(t, s, alice, roomID, "m.room.message", text("thread A"))
		b := send(t, s, bob, roomID, "m.room.message", text("thread B"))
		c := send(t, s, alice, roomID, "m.room.message", text("thread C"))
		send(t, s, alice, roomID, "m.room.message", text("not a thread"))
		send(t, s, bob, roomID, "m.room.message", related("in B", "m.thread", b))
		send(t, s, alice, roomID, "m.room.message", related("in C", "m.thread", c))
		last := send(t, s, bob, roomID, "m.room.message", related("in A", "m.thread", a))
		waitSeen(t, s, alice, roomID, last)

		threadsPath := "/_matrix/client/v1/rooms/" + url.PathEscape(roomID) + "/threads"
		get := func(u *testserver.User, query string) gjson.Result {
			return s.MustOK("GET", threadsPath+query, u.AccessToken, nil).JSON()
		}
		expect := func(what string, r gjson.Result, want string) {
			t.Helper()
			if got := ids(r.Get("chunk")); got != want {
				t.Fatalf("%s: got %s, want %s (%s)", what, got, want, r.Raw)
			}
		}
		// Most recently active first, with aggregations.
		all := get(carol, "")
		expect("all", all, list(a, c, b))
		if all.Get("next_batch").Exists() || all.Get(`chunk.0.unsigned.m\.relations.m\.thread.latest_event.event_id`).String() != last {
			t.Fatalf("threads are served with their aggregation: %s", all.Raw)
		}
		p1 := get(carol, "?limit=2")
		expect("page 1", p1, list(a, c))
		p2 := get(carol, "?limit=2&from="+url.QueryEscape(p1.Get("next_batch").String()))
		expect("page 2", p2, b)
		if p2.Get("next_batch").Exists() {
			t.Fatalf("last page has a next_batch: %s", p2.Raw)
		}
		// participated: threads the user started or replied in.
		expect("alice participated", get(alice, "?include=participated"), list(a, c))
		expect("bob participated", get(bob, "?include=participated"), list(a, b))
		expect("carol participated", get(carol, "?include=participated"), "")
		expect("bob participated page", get(bob, "?include=participated&limit=1"), a)

		// New activity moves a thread to the front.
		newest := send(t, s, carol, roomID, "m.room.message", related("carol in B", "m.thread", b))
		waitSeen(t, s, alice, roomID, newest)
		expect("after new activity", get(carol, ""), list(b, a, c))
		expect("carol now participated", get(carol, "?include=participated"), b)

		// A root sent by an ignored user is served redacted.
		s.MustOK("PUT", "/_matrix/client/v3/user/"+url.PathEscape(carol.UserID)+"/account_data/m.ignored_user_list", carol.AccessToken,
			map[string]any{"ignored_users": map[string]any{bob.UserID: map[string]any{}}})
		ignoring := get(carol, "")
		if rb := ignoring.Get("chunk.#(event_id==" + b + ")"); rb.Get("content.body").Exists() || !rb.Get(`unsigned.m\.relations.m\.thread`).Exists() {
			t.Fatalf("an ignored user's root: %s", ignoring.Raw)
		}
		if ignoring.Get("chunk.#(event_id=="+a+").content.body").String() != "thread A" {
			t.Fatalf("other roots are served whole: %s", ignoring.Raw)
		}

		s.ExpectError(403, "M_FORBIDDEN", "GET", threadsPath, dave.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", threadsPath+"?include=some", carol.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", threadsPath+"?limit=0", carol.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", threadsPath+"?from=x", carol.AccessToken, nil)
	})
}

// Notification counts per thread: a threaded receipt clears its thread
// only, an unthreaded one everything before it.
func TestThreadNotificationCounts(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := createRoom(t, s, alice.UserID)
		next := joinRoom(t, s, bob, roomID)
		room := "rooms.join." + gjson.Escape(roomID)
		filter := "&filter=" + url.QueryEscape(`{"room":{"timeline":{"unread_thread_notifications":true}}}`)
		counts := func(r gjson.Result, thread string) int64 {
			if thread == "" {
				return r.Get(room + ".unread_notifications.notification_count").Int()
			}
			return r.Get(room + ".unread_thread_notifications." + gjson.Escape(thread) + ".notification_count").Int()
		}

		root := send(t, s, alice, roomID, "m.room.message", text("main one"))
		send(t, s, alice, roomID, "m.room.message", related("thread one", "m.thread", root))
		reply := send(t, s, alice, roomID, "m.room.message", related("thread two", "m.thread", root))
		r := syncUntil(t, s, bob, next, filter, func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + reply + ")").Exists()
		})
		if counts(r, "") != 1 || counts(r, root) != 2 {
			t.Fatalf("main 1 and thread 2 expected: %s", r.Get(room).Raw)
		}
		// The thread's own receipt clears the thread, not the main timeline.
		next = r.Get("next_batch").String()
		s.MustOK("POST", receiptPath(roomID, "m.read", reply), bob.AccessToken, map[string]string{"thread_id": root})
		r = syncUntil(t, s, bob, next, filter, func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		if counts(r, "") != 1 || r.Get(room+".unread_thread_notifications").Exists() {
			t.Fatalf("after the thread receipt: %s", r.Get(room).Raw)
		}
		// An unthreaded receipt clears the main timeline and every thread
		// up to it.
		next = r.Get("next_batch").String()
		third := send(t, s, alice, roomID, "m.room.message", related("thread three", "m.thread", root))
		last := send(t, s, alice, roomID, "m.room.message", text("main two"))
		r = syncUntil(t, s, bob, next, filter, func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + last + ")").Exists()
		})
		if counts(r, "") != 2 || counts(r, root) != 1 {
			t.Fatalf("main 2 and thread 1 expected: %s", r.Get(room).Raw)
		}
		next = r.Get("next_batch").String()
		s.MustOK("POST", receiptPath(roomID, "m.read", last), bob.AccessToken, map[string]any{})
		r = syncUntil(t, s, bob, next, filter, func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		if counts(r, "") != 0 || r.Get(room+".unread_thread_notifications").Exists() {
			t.Fatalf("after the unthreaded receipt (thread reply %s): %s", third, r.Get(room).Raw)
		}
	})
}

// Events stored before the relations index existed are indexed by its
// second migration: emptied here, replayed, and served again.
func TestRelationsIndexBackfill(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		roomID := createRoom(t, s, alice.UserID)
		root := send(t, s, alice, roomID, "m.room.message", text("root"))
		r1 := send(t, s, alice, roomID, "m.room.message", related("one", "m.thread", root))
		gone := send(t, s, alice, roomID, "m.room.message", related("gone", "m.thread", root))
		edit := send(t, s, alice, roomID, "m.room.message", editOf(root, "edited"))
		send(t, s, alice, roomID, "m.room.message", map[string]any{"body": "bad", "m.relates_to": map[string]any{"rel_type": 7, "event_id": root}})
		red := s.MustOK("PUT", roomPath(roomID, "/redact/"+url.PathEscape(gone)+"/r1"), alice.AccessToken, map[string]any{}).Get("event_id").String()
		waitSeen(t, s, alice, roomID, red)

		ctx := context.Background()
		db := s.Server.DB
		for _, q := range []string{`DELETE FROM syncapi_relations`, `DELETE FROM syncapi_threads`,
			`DELETE FROM schema_migrations WHERE component = 'syncapi_relations' AND version = 2`} {
			if _, err := db.Writer().ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		threadsPath := "/_matrix/client/v1/rooms/" + url.PathEscape(roomID) + "/threads"
		if got := ids(s.MustOK("GET", threadsPath, alice.AccessToken, nil).Get("chunk")); got != "" {
			t.Fatalf("index not emptied: %s", got)
		}
		if err := db.Migrate(ctx, syncapi.RelationsComponent, syncapi.RelationsMigrations); err != nil {
			t.Fatal(err)
		}
		if got := ids(s.MustOK("GET", relationsPath(roomID, root), alice.AccessToken, nil).Get("chunk")); got != list(edit, r1) {
			t.Fatalf("relations after the backfill: %s", got)
		}
		threads := s.MustOK("GET", threadsPath, alice.AccessToken, nil).JSON()
		if ids(threads.Get("chunk")) != root || threads.Get(`chunk.0.unsigned.m\.relations.m\.thread.latest_event.event_id`).String() != r1 {
			t.Fatalf("threads after the backfill: %s", threads.Raw)
		}
	})
}
