package syncapi_test

import (
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// Push rules at work, driven over HTTP as a client would: unread counts
// and /notifications follow messages, mentions, muted rooms and receipts.

var pushTxn atomic.Int64

// pushRoom creates a public room over HTTP and joins the others to it.
func pushRoom(t *testing.T, s *testserver.Server, creator *testserver.User, others ...*testserver.User) string {
	t.Helper()
	roomID := s.MustOK("POST", "/_matrix/client/v3/createRoom", creator.AccessToken, map[string]any{"preset": "public_chat"}).
		Get("room_id").String()
	for _, u := range others {
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), u.AccessToken, map[string]any{})
	}
	return roomID
}

// pushSend sends an event over HTTP and returns its ID.
func pushSend(t *testing.T, s *testserver.Server, u *testserver.User, roomID, evType string, content map[string]any) string {
	t.Helper()
	txn := strconv.FormatInt(pushTxn.Add(1), 10)
	return s.MustOK("PUT", roomPath(roomID, "/send/"+url.PathEscape(evType)+"/"+txn), u.AccessToken, content).
		Get("event_id").String()
}

func pushText(t *testing.T, s *testserver.Server, u *testserver.User, roomID, body string, extra map[string]any) string {
	t.Helper()
	content := map[string]any{"msgtype": "m.text", "body": body}
	for k, v := range extra {
		content[k] = v
	}
	return pushSend(t, s, u, roomID, "m.room.message", content)
}

// pushCounts syncs (initially) until the room's timeline shows the event,
// and returns the room's entry: the counts come with the event.
func pushCounts(t *testing.T, s *testserver.Server, u *testserver.User, roomID, eventID, params string) gjson.Result {
	t.Helper()
	room := "rooms.join." + gjson.Escape(roomID)
	r := syncUntil(t, s, u, "", params, func(r gjson.Result) bool {
		return r.Get(room + ".timeline.events.#(event_id==" + eventID + ")").Exists()
	})
	return r.Get(room)
}

func expectCounts(t *testing.T, room gjson.Result, notifications, highlights int64) {
	t.Helper()
	u := room.Get("unread_notifications")
	if u.Get("notification_count").Int() != notifications || u.Get("highlight_count").Int() != highlights {
		t.Fatalf("unread %s, want %d notifications and %d highlights", u.Raw, notifications, highlights)
	}
}

// notifications returns the event IDs of a user's /notifications page.
func notifications(t *testing.T, s *testserver.Server, u *testserver.User, query string) (gjson.Result, []string) {
	t.Helper()
	r := s.MustOK("GET", "/_matrix/client/v3/notifications?"+query, u.AccessToken, nil).JSON()
	var ids []string
	r.Get("notifications.#.event.event_id").ForEach(func(_, v gjson.Result) bool {
		ids = append(ids, v.String())
		return true
	})
	return r, ids
}

func sameIDs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPushCountsAndNotifications(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		s.MustOK("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(bob.UserID)+"/displayname", bob.AccessToken,
			map[string]string{"displayname": "Bobby Tables"})
		roomID := pushRoom(t, s, alice, bob, carol)

		hello := pushText(t, s, alice, roomID, "hello", nil)
		expectCounts(t, pushCounts(t, s, bob, roomID, hello, ""), 1, 0)

		mention := pushText(t, s, alice, roomID, "hey", map[string]any{"m.mentions": map[string]any{"user_ids": []string{bob.UserID}}})
		byName := pushText(t, s, alice, roomID, "what do you think, bobby tables?", nil)
		nameButMentions := pushText(t, s, alice, roomID, "bobby tables said so", map[string]any{"m.mentions": map[string]any{}})
		pushSend(t, s, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.notice", "body": "bobby tables, a bot says"})
		pushText(t, s, bob, roomID, "my own message, bobby tables", nil)
		roomByCarol := pushText(t, s, carol, roomID, "everyone!", map[string]any{"m.mentions": map[string]any{"room": true}})
		roomByAlice := pushText(t, s, alice, roomID, "everyone!", map[string]any{"m.mentions": map[string]any{"room": true}})
		pushText(t, s, alice, roomID, "* hello", map[string]any{"m.new_content": map[string]any{"body": "hello"},
			"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": hello}})
		last := pushSend(t, s, alice, roomID, "m.reaction", map[string]any{
			"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": mention, "key": "👍"}})

		// bob: hello, the mention (highlight), the display name without
		// m.mentions (highlight), with m.mentions (not), carol's room
		// mention (no power: not), alice's (highlight); not the notice,
		// his own message, the edit or the reaction.
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 6, 3)
		// carol: the same but her own message and bob's, and only alice's
		// room mention highlights.
		expectCounts(t, pushCounts(t, s, carol, roomID, last, ""), 6, 1)

		// /notifications, newest first, in pages, with highlights alone.
		want := []string{roomByAlice, roomByCarol, nameButMentions, byName, mention, hello}
		page, ids := notifications(t, s, bob, "")
		if !sameIDs(ids, want) || page.Get("next_token").Exists() {
			t.Fatalf("notifications %q, want %q: %s", ids, want, page.Raw)
		}
		first := page.Get("notifications.0")
		if first.Get("room_id").String() != roomID || first.Get("read").Bool() || first.Get("ts").Int() <= 0 ||
			!first.Get("profile_tag").Exists() || first.Get("event.room_id").Exists() || first.Get("event.type").String() != "m.room.message" ||
			first.Get("actions.0").String() != "notify" || !first.Get(`actions.#(set_tweak=="highlight")`).Exists() {
			t.Fatalf("a notification: %s", first.Raw)
		}
		page, ids = notifications(t, s, bob, "limit=4")
		next := page.Get("next_token").String()
		if !sameIDs(ids, want[:4]) || next == "" {
			t.Fatalf("first page %q: %s", ids, page.Raw)
		}
		page, ids = notifications(t, s, bob, "limit=4&from="+url.QueryEscape(next))
		if !sameIDs(ids, want[4:]) || page.Get("next_token").Exists() {
			t.Fatalf("second page %q: %s", ids, page.Raw)
		}
		if _, ids = notifications(t, s, bob, "only=highlight"); !sameIDs(ids, []string{roomByAlice, byName, mention}) {
			t.Fatalf("highlights %q", ids)
		}

		// A receipt marks what it covers as read: the counts shrink and
		// /notifications says which are read.
		s.MustOK("POST", receiptPath(roomID, "m.read", byName), bob.AccessToken, map[string]any{})
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 3, 1)
		page, _ = notifications(t, s, bob, "")
		for i, wantRead := range []bool{false, false, false, true, true, true} {
			if page.Get("notifications."+strconv.Itoa(i)+".read").Bool() != wantRead {
				t.Fatalf("read flags: %s", page.Get("notifications.#.read").Raw)
			}
		}
		// A private receipt further on clears the rest; carol's stay.
		s.MustOK("POST", receiptPath(roomID, "m.read.private", last), bob.AccessToken, map[string]any{})
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 0, 0)
		expectCounts(t, pushCounts(t, s, carol, roomID, last, ""), 6, 1)
		// A new message counts again.
		again := pushText(t, s, alice, roomID, "again", nil)
		expectCounts(t, pushCounts(t, s, bob, roomID, again, ""), 1, 0)
	})
}

func TestPushMutedRoom(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := pushRoom(t, s, alice, bob)
		other := pushRoom(t, s, alice, bob)
		mentionBob := map[string]any{"m.mentions": map[string]any{"user_ids": []string{bob.UserID}}}
		rule := func(kind, id string) string {
			return "/_matrix/client/v3/pushrules/global/" + kind + "/" + url.PathEscape(id)
		}

		// "Mentions only": a room rule without actions silences messages,
		// but mentions (override rules) still count.
		s.MustOK("PUT", rule("room", roomID), bob.AccessToken, map[string]any{"actions": []any{}})
		pushText(t, s, alice, roomID, "quiet", nil)
		last := pushText(t, s, alice, roomID, "still quiet", nil)
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 0, 0)
		last = pushText(t, s, alice, roomID, "but this", mentionBob)
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 1, 1)
		// Other rooms are not muted.
		o := pushText(t, s, alice, other, "elsewhere", nil)
		expectCounts(t, pushCounts(t, s, bob, other, o, ""), 1, 0)

		// The historical dont_notify is the same as no actions.
		s.MustOK("PUT", rule("room", roomID), bob.AccessToken, map[string]any{"actions": []any{"dont_notify"}})
		last = pushText(t, s, alice, roomID, "quiet again", nil)
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 1, 1)

		// Fully muted: an override on the room ID silences mentions too.
		s.MustOK("DELETE", rule("room", roomID), bob.AccessToken, nil)
		s.MustOK("PUT", rule("override", roomID), bob.AccessToken, map[string]any{"actions": []any{},
			"conditions": []any{map[string]any{"kind": "event_match", "key": "room_id", "pattern": roomID}}})
		pushText(t, s, alice, roomID, "muted mention", mentionBob)
		last = pushText(t, s, alice, roomID, "muted", nil)
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 1, 1)

		// Unmuted, messages count again.
		s.MustOK("DELETE", rule("override", roomID), bob.AccessToken, nil)
		last = pushText(t, s, alice, roomID, "back", nil)
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 2, 1)

		// The master rule silences everything; the muted messages are not
		// in /notifications.
		s.MustOK("PUT", rule("override", ".m.rule.master")+"/enabled", bob.AccessToken, map[string]any{"enabled": true})
		last = pushText(t, s, alice, roomID, "master says no", mentionBob)
		expectCounts(t, pushCounts(t, s, bob, roomID, last, ""), 2, 1)
		if _, ids := notifications(t, s, bob, ""); len(ids) != 3 {
			t.Fatalf("notifications %q, want the mention, elsewhere and back", ids)
		}
	})
}

func TestPushInvitesAndThreads(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	dave := s.Register("dave", "pw")
	roomID := pushRoom(t, s, alice, bob)

	// An invite notifies the (local) invitee.
	s.MustOK("POST", roomPath(roomID, "/invite"), alice.AccessToken, map[string]string{"user_id": dave.UserID})
	deadline := time.Now().Add(10 * time.Second)
	for {
		page, _ := notifications(t, s, dave, "")
		n := page.Get("notifications.0")
		if n.Exists() {
			if n.Get("event.type").String() != "m.room.member" || n.Get("event.state_key").String() != dave.UserID || n.Get("room_id").String() != roomID {
				t.Fatalf("invite notification: %s", n.Raw)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no notification of the invite")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A thread counts apart with unread_thread_notifications; an event
	// relating to a thread's event belongs to the thread (here a reaction,
	// which bob asks to be notified of).
	threads := "&filter=" + url.QueryEscape(`{"room":{"timeline":{"unread_thread_notifications":true}}}`)
	s.MustOK("PUT", "/_matrix/client/v3/pushrules/global/override/reactions", bob.AccessToken, map[string]any{
		"actions": []any{"notify"}, "conditions": []any{map[string]any{"kind": "event_match", "key": "type", "pattern": "m.reaction"}}})
	root := pushText(t, s, alice, roomID, "root", nil)
	s.MustOK("POST", receiptPath(roomID, "m.read", root), bob.AccessToken, map[string]any{})
	reply := pushText(t, s, alice, roomID, "in the thread", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
	reaction := pushSend(t, s, alice, roomID, "m.reaction", map[string]any{
		"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": reply, "key": "👍"}})
	room := pushCounts(t, s, bob, roomID, reaction, threads)
	expectCounts(t, room, 0, 0)
	thread := room.Get("unread_thread_notifications." + gjson.Escape(root))
	if thread.Get("notification_count").Int() != 2 || thread.Get("highlight_count").Int() != 0 {
		t.Fatalf("thread counts: %s", room.Raw)
	}
	// Without the filter option the thread counts in the room.
	expectCounts(t, pushCounts(t, s, bob, roomID, reaction, ""), 2, 0)
	// A reaction to the root is in the main timeline.
	onRoot := pushSend(t, s, alice, roomID, "m.reaction", map[string]any{
		"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": root, "key": "👀"}})
	room = pushCounts(t, s, bob, roomID, onRoot, threads)
	expectCounts(t, room, 1, 0)
	// A receipt in the thread clears the thread only.
	s.MustOK("POST", receiptPath(roomID, "m.read", reaction), bob.AccessToken, map[string]string{"thread_id": root})
	room = pushCounts(t, s, bob, roomID, onRoot, threads)
	expectCounts(t, room, 1, 0)
	if room.Get("unread_thread_notifications").Exists() {
		t.Fatalf("the thread is still unread: %s", room.Raw)
	}
	expectCounts(t, pushCounts(t, s, bob, roomID, onRoot, ""), 1, 0)
}

func TestPushRulesInSync(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	rules := `account_data.events.#(type=="m.push_rules").content.global`

	// The first sync carries the defaults; the next has nothing new.
	r := s.MustOK("GET", "/_matrix/client/v3/sync", alice.AccessToken, nil).JSON()
	if r.Get(rules+".override.0.rule_id").String() != ".m.rule.master" ||
		r.Get(rules+`.override.#(rule_id==".m.rule.is_user_mention").conditions.0.value`).String() != alice.UserID {
		t.Fatalf("initial sync account data: %s", r.Get("account_data").Raw)
	}
	next := r.Get("next_batch").String()
	quiet := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(next), alice.AccessToken, nil).JSON()
	if len(quiet.Get("account_data.events").Array()) != 0 {
		t.Fatalf("the rules came again: %s", quiet.Get("account_data").Raw)
	}
	next = quiet.Get("next_batch").String()

	// Each change wakes a waiting sync and comes down whole.
	for _, change := range []struct {
		method, path string
		body         any
		check        func(gjson.Result) bool
	}{
		{"PUT", "/global/sender/" + url.PathEscape("@spam:localhost"), map[string]any{"actions": []any{}},
			func(g gjson.Result) bool { return g.Get("sender.0.rule_id").String() == "@spam:localhost" }},
		{"PUT", "/global/sender/" + url.PathEscape("@spam:localhost") + "/enabled", map[string]any{"enabled": false},
			func(g gjson.Result) bool {
				return g.Get("sender.0.enabled").Exists() && !g.Get("sender.0.enabled").Bool()
			}},
		{"PUT", "/global/underride/.m.rule.message/actions", map[string]any{"actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "bing"}}},
			func(g gjson.Result) bool {
				return g.Get(`underride.#(rule_id==".m.rule.message").actions.1.value`).String() == "bing"
			}},
		{"DELETE", "/global/sender/" + url.PathEscape("@spam:localhost"), nil,
			func(g gjson.Result) bool { return g.Get("sender").Raw == "[]" }},
	} {
		after(s, change.method, "/_matrix/client/v3/pushrules"+change.path, alice.AccessToken, change.body)
		r := pollUntil(t, s, alice, next, 10*time.Second, func(r gjson.Result) bool { return r.Get(rules).Exists() })
		if !change.check(r.Get(rules)) {
			t.Fatalf("%s %s: %s", change.method, change.path, r.Get(rules).Raw)
		}
		next = r.Get("next_batch").String()
	}
}

// TestPushMemberEventsFollowChangedRules checks the shortcut for member
// events: users with the default rules are not notified of others' joins,
// a user with a rule of their own for member events is (their rules are
// evaluated), and an invitee with the default rules still is.
func TestPushMemberEventsFollowChangedRules(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		dan := s.Register("dan", "pw")
		roomID := pushRoom(t, s, alice, bob)
		s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0", alice.AccessToken, nil) // stores alice's defaults
		s.MustOK("PUT", "/_matrix/client/v3/pushrules/global/override/joins", bob.AccessToken, map[string]any{
			"conditions": []any{map[string]any{"kind": "event_match", "key": "type", "pattern": "m.room.member"}},
			"actions":    []any{"notify"}})
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), carol.AccessToken, map[string]any{})
		s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", alice.AccessToken,
			map[string]any{"user_id": dan.UserID})
		marker := pushText(t, s, carol, roomID, "after the join", nil)

		notified := func(u *testserver.User, evType string) bool {
			deadline := time.Now().Add(10 * time.Second)
			for {
				n := s.MustOK("GET", "/_matrix/client/v3/notifications", u.AccessToken, nil).JSON()
				if n.Get("notifications.#(event.event_id=="+marker+")").Exists() || u == dan {
					return n.Get(`notifications.#(event.type=="` + evType + `")`).Exists()
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s never got the marker: %s", u.UserID, n.Raw)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		if notified(alice, "m.room.member") {
			t.Error("alice, with the default rules, was notified of a join")
		}
		if !notified(bob, "m.room.member") {
			t.Error("bob, whose own rule notifies of member events, was not notified of carol's join")
		}
		deadline := time.Now().Add(10 * time.Second)
		for !notified(dan, "m.room.member") {
			if time.Now().After(deadline) {
				t.Fatal("dan was not notified of his invite")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// The one-to-one rule (room_member_count == 2) follows the room's size:
// a message in a room of two plays a sound, and once a third member
// joins, the next message does not (the member count kept between
// events is dropped at the join).
func TestOneToOneRuleFollowsMemberCount(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice, bob, carol := s.Register("alice", "pw"), s.Register("bob", "pw"), s.Register("carol", "pw")
		roomID := pushRoom(t, s, alice, bob)
		first := pushText(t, s, alice, roomID, "just us", nil)
		second := pushText(t, s, alice, roomID, "still us", nil)
		s.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), carol.AccessToken, map[string]any{})
		third := pushText(t, s, alice, roomID, "three of us", nil)
		pushCounts(t, s, bob, roomID, third, "")
		r, ids := notifications(t, s, bob, "")
		if !sameIDs(ids, []string{third, second, first}) {
			t.Fatalf("notifications %v, want %v", ids, []string{third, second, first})
		}
		sound := func(i int) bool {
			return r.Get("notifications." + strconv.Itoa(i) + ".actions.#(set_tweak==sound)").Exists()
		}
		if !sound(2) || !sound(1) || sound(0) {
			t.Fatalf("sound tweaks (newest first) %v %v %v: %s", sound(0), sound(1), sound(2), r.Get("notifications.#.actions").Raw)
		}
	})
}
