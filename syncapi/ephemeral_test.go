package syncapi_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/syncapi"
)

// roomPath is the client API path of a room's endpoint.
func roomPath(roomID, rest string) string {
	return "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + rest
}

func typingPath(roomID, userID string) string {
	return roomPath(roomID, "/typing/"+url.PathEscape(userID))
}

func receiptPath(roomID, receiptType, eventID string) string {
	return roomPath(roomID, "/receipt/"+url.PathEscape(receiptType)+"/"+url.PathEscape(eventID))
}

// joinRoom joins u to the room and waits until u's sync shows it, so the
// sync API knows the membership. It returns u's next_batch.
func joinRoom(t *testing.T, s *testserver.Server, u *testserver.User, roomID string) string {
	t.Helper()
	setMembership(t, s, roomID, u.UserID, u.UserID, "join")
	r := syncUntil(t, s, u, "", "", func(r gjson.Result) bool { return r.Get("rooms.join." + gjson.Escape(roomID)).Exists() })
	return r.Get("next_batch").String()
}

// pollUntil long-polls from since, moving on with each response, until
// cond holds, and fails when that takes longer than within: a long poll
// that nothing wakes takes 20 seconds. Other news (presence) may wake it
// first, hence the moving on.
func pollUntil(t *testing.T, s *testserver.Server, u *testserver.User, since string, within time.Duration, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	start := time.Now()
	for {
		r := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(since), u.AccessToken, nil).JSON()
		if cond(r) {
			return r
		}
		if time.Since(start) > within {
			t.Fatalf("no long poll woke with the news in %v; last response: %s", within, r.Raw)
		}
		since = r.Get("next_batch").String()
	}
}

// after runs a request in the background, shortly after a long poll started.
func after(s *testserver.Server, method, path, token string, body any) {
	go func() {
		time.Sleep(200 * time.Millisecond)
		s.Request(method, path, token, body)
	}()
}

func ephemeral(r gjson.Result, roomID, evType string) gjson.Result {
	return r.Get("rooms.join." + gjson.Escape(roomID) + ".ephemeral.events.#(type==" + evType + ").content")
}

func token(t *testing.T, r gjson.Result) syncapi.Token {
	t.Helper()
	tok, err := syncapi.ParseToken(r.Get("next_batch").String())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTyping(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	eve := s.Register("eve", "pw")
	roomID := createRoom(t, s, alice.UserID)
	room := "rooms.join." + gjson.Escape(roomID)
	next := joinRoom(t, s, bob, roomID)
	firstTyping, err := syncapi.ParseToken(next)
	if err != nil {
		t.Fatal(err)
	}
	hasTyping := func(r gjson.Result) bool { return ephemeral(r, roomID, "m.typing").Exists() }

	// Alice starts typing: bob's long poll wakes with just that.
	after(s, "PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"typing": true, "timeout": 30000})
	r := pollUntil(t, s, bob, next, 10*time.Second, hasTyping)
	if users := ephemeral(r, roomID, "m.typing").Get("user_ids"); len(users.Array()) != 1 || users.Array()[0].String() != alice.UserID {
		t.Fatalf("bob does not see alice typing: %s", r.Raw)
	}
	if r.Get(room+".timeline.events.#").Int() != 0 || r.Get(room+".timeline.limited").Bool() || r.Get(room+".timeline.prev_batch").String() == "" {
		t.Fatalf("an ephemeral-only room has a timeline: %s", r.Get(room).Raw)
	}
	tok := token(t, r)
	if tok.Typing <= firstTyping.Typing {
		t.Fatalf("typing position did not grow: %d then %d", firstTyping.Typing, tok.Typing)
	}
	next = r.Get("next_batch").String()

	// An initial sync shows who is typing.
	initial := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool { return r.Get(room).Exists() })
	if ephemeral(initial, roomID, "m.typing").Get("user_ids.0").String() != alice.UserID {
		t.Fatalf("initial sync lacks the typing user: %s", initial.Get(room+".ephemeral").Raw)
	}

	// Typing again changes nothing, so nothing wakes bob; stopping does.
	s.MustOK("PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"typing": true, "timeout": 30000})
	if r := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(next), bob.AccessToken, nil).JSON(); r.Get(room).Exists() {
		t.Fatalf("repeating typing shows again: %s", r.Get(room).Raw)
	}
	after(s, "PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"typing": false})
	r = pollUntil(t, s, bob, next, 10*time.Second, hasTyping)
	if users := ephemeral(r, roomID, "m.typing").Get("user_ids"); !users.IsArray() || len(users.Array()) != 0 {
		t.Fatalf("bob does not see alice stop: %s", r.Raw)
	}
	if token(t, r).Typing <= tok.Typing {
		t.Fatal("typing position did not grow")
	}
	next = r.Get("next_batch").String()

	// Typing expires by itself, and the expiry wakes bob.
	s.MustOK("PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"typing": true, "timeout": 1000})
	r = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool {
		return ephemeral(r, roomID, "m.typing").Get("user_ids.0").String() == alice.UserID
	})
	r = pollUntil(t, s, bob, r.Get("next_batch").String(), 10*time.Second, hasTyping)
	if users := ephemeral(r, roomID, "m.typing").Get("user_ids"); !users.IsArray() || len(users.Array()) != 0 {
		t.Fatalf("typing did not expire: %s", r.Raw)
	}

	// A filter can leave typing out.
	s.MustOK("PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"typing": true})
	filtered := s.MustOK("GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(`{"room":{"ephemeral":{"not_types":["m.typing"]}}}`), bob.AccessToken, nil).JSON()
	if ephemeral(filtered, roomID, "m.typing").Exists() {
		t.Fatalf("filtered typing: %s", filtered.Get(room+".ephemeral").Raw)
	}

	// Only members type, and only for themselves.
	s.ExpectError(403, "M_FORBIDDEN", "PUT", typingPath(roomID, eve.UserID), eve.AccessToken, map[string]any{"typing": true})
	s.ExpectError(403, "M_FORBIDDEN", "PUT", typingPath(roomID, bob.UserID), alice.AccessToken, map[string]any{"typing": true})
	s.ExpectError(403, "M_FORBIDDEN", "PUT", typingPath("!nowhere:localhost", alice.UserID), alice.AccessToken, map[string]any{"typing": true})
	s.ExpectError(400, "M_BAD_JSON", "PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"timeout": 10})
	s.ExpectError(400, "M_BAD_JSON", "PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"typing": "yes"})
	s.ExpectError(400, "M_INVALID_PARAM", "PUT", typingPath(roomID, alice.UserID), alice.AccessToken, map[string]any{"typing": true, "timeout": -1})
	s.ExpectError(400, "M_NOT_JSON", "PUT", typingPath(roomID, alice.UserID), alice.AccessToken, "nope")
}

func TestReceipts(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		eve := s.Register("eve", "pw")
		roomID := createRoom(t, s, alice.UserID)
		otherRoom := createRoom(t, s, alice.UserID)
		room := "rooms.join." + gjson.Escape(roomID)
		bobNext := joinRoom(t, s, bob, roomID)
		msg1 := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "one"})
		msg2 := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "two"})
		elsewhere := sendEvent(t, s, otherRoom, alice.UserID, "m.room.message", nil, map[string]string{"body": "elsewhere"})
		r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + msg2 + ")").Exists()
		})
		aliceNext := r.Get("next_batch").String()

		// Bob's read receipt reaches alice's long poll.
		after(s, "POST", receiptPath(roomID, "m.read", msg1), bob.AccessToken, map[string]any{})
		r = pollUntil(t, s, alice, aliceNext, 10*time.Second, func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		if !ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(msg1) + ".m\\.read." + gjson.Escape(bob.UserID) + ".ts").Exists() {
			t.Fatalf("alice does not see bob's receipt: %s", r.Raw)
		}
		if ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(msg1) + ".m\\.read." + gjson.Escape(bob.UserID) + ".thread_id").Exists() {
			t.Fatal("an unthreaded receipt has a thread_id")
		}
		firstPos := token(t, r).Receipt
		aliceNext = r.Get("next_batch").String()

		// A later receipt replaces it.
		s.MustOK("POST", receiptPath(roomID, "m.read", msg2), bob.AccessToken, nil)
		r = syncUntil(t, s, alice, aliceNext, "", func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		receipt := ephemeral(r, roomID, "m.receipt")
		if !receipt.Get(gjson.Escape(msg2)+".m\\.read."+gjson.Escape(bob.UserID)).Exists() || receipt.Get(gjson.Escape(msg1)).Exists() {
			t.Fatalf("incremental receipts: %s", receipt.Raw)
		}
		if token(t, r).Receipt <= firstPos {
			t.Fatal("receipt position did not grow")
		}
		aliceNext = r.Get("next_batch").String()
		initial := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool { return r.Get(room).Exists() })
		receipt = ephemeral(initial, roomID, "m.receipt")
		if !receipt.Get(gjson.Escape(msg2)+".m\\.read."+gjson.Escape(bob.UserID)).Exists() || receipt.Get(gjson.Escape(msg1)).Exists() {
			t.Fatalf("the replaced receipt is still there: %s", receipt.Raw)
		}

		// A private receipt only its owner sees; a threaded one carries its thread.
		s.MustOK("POST", receiptPath(roomID, "m.read.private", msg2), bob.AccessToken, map[string]any{})
		syncUntil(t, s, bob, bobNext, "", func(r gjson.Result) bool {
			return ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(msg2) + ".m\\.read\\.private." + gjson.Escape(bob.UserID)).Exists()
		})
		s.MustOK("POST", receiptPath(roomID, "m.read", msg1), bob.AccessToken, map[string]string{"thread_id": "main"})
		r = syncUntil(t, s, alice, aliceNext, "", func(r gjson.Result) bool {
			return ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(msg1)+".m\\.read."+gjson.Escape(bob.UserID)+".thread_id").String() == "main"
		})
		if ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(msg2) + ".m\\.read\\.private").Exists() {
			t.Fatalf("alice sees bob's private receipt: %s", r.Get(room+".ephemeral").Raw)
		}
		initial = s.MustOK("GET", "/_matrix/client/v3/sync", alice.AccessToken, nil).JSON()
		if ephemeral(initial, roomID, "m.receipt").Get(gjson.Escape(msg2) + ".m\\.read\\.private").Exists() {
			t.Fatalf("alice's initial sync has bob's private receipt: %s", initial.Get(room+".ephemeral").Raw)
		}
		// Receipts in a thread name the thread root.
		reply := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "in thread",
			"m.relates_to": map[string]string{"rel_type": "m.thread", "event_id": msg1}})
		syncUntil(t, s, bob, bobNext, "", func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + reply + ")").Exists()
		})
		s.MustOK("POST", receiptPath(roomID, "m.read", reply), bob.AccessToken, map[string]string{"thread_id": msg1})
		syncUntil(t, s, alice, aliceNext, "", func(r gjson.Result) bool {
			return ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(reply)+".m\\.read."+gjson.Escape(bob.UserID)+".thread_id").String() == msg1
		})

		// m.fully_read through the receipt endpoint sets the read marker.
		s.MustOK("POST", receiptPath(roomID, "m.fully_read", msg1), bob.AccessToken, map[string]any{})
		syncUntil(t, s, bob, bobNext, "", func(r gjson.Result) bool {
			return r.Get(room+".account_data.events.#(type==m.fully_read).content.event_id").String() == msg1
		})

		// Failures.
		s.ExpectError(400, "M_INVALID_PARAM", "POST", receiptPath(roomID, "m.seen", msg1), bob.AccessToken, map[string]any{})
		s.ExpectError(404, "M_NOT_FOUND", "POST", receiptPath(roomID, "m.read", "$nope"), bob.AccessToken, map[string]any{})
		s.ExpectError(404, "M_NOT_FOUND", "POST", receiptPath(roomID, "m.read", "nope"), bob.AccessToken, map[string]any{})
		s.ExpectError(404, "M_NOT_FOUND", "POST", receiptPath(roomID, "m.read", elsewhere), alice.AccessToken, map[string]any{})
		s.ExpectError(403, "M_FORBIDDEN", "POST", receiptPath(roomID, "m.read", msg1), eve.AccessToken, map[string]any{})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", receiptPath(roomID, "m.read", msg1), bob.AccessToken, map[string]any{"thread_id": ""})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", receiptPath(roomID, "m.read", msg1), bob.AccessToken, map[string]any{"thread_id": 7})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", receiptPath(roomID, "m.read", msg1), bob.AccessToken, map[string]any{"thread_id": "$unknown"})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", receiptPath(roomID, "m.fully_read", msg1), bob.AccessToken, map[string]any{"thread_id": "main"})
		s.ExpectError(400, "M_NOT_JSON", "POST", receiptPath(roomID, "m.read", msg1), bob.AccessToken, "[1]")
	})
}

func TestReadMarkers(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := createRoom(t, s, alice.UserID)
		room := "rooms.join." + gjson.Escape(roomID)
		msg1 := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "one"})
		msg2 := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "two"})
		r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + msg2 + ")").Exists()
		})
		next := r.Get("next_batch").String()
		path := roomPath(roomID, "/read_markers")

		after(s, "POST", path, alice.AccessToken, map[string]string{"m.fully_read": msg1, "m.read": msg2})
		pollUntil(t, s, alice, next, 10*time.Second, func(r gjson.Result) bool { return r.Get(room).Exists() })
		// The account data and the receipt may come in two syncs.
		r = syncUntil(t, s, alice, next, "", func(r gjson.Result) bool {
			return r.Get(room+".account_data.events.#(type==m.fully_read)").Exists() && ephemeral(r, roomID, "m.receipt").Exists()
		})
		if r.Get(room+".account_data.events.#(type==m.fully_read).content.event_id").String() != msg1 {
			t.Fatalf("fully read marker: %s", r.Get(room+".account_data").Raw)
		}
		if !ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(msg2) + ".m\\.read." + gjson.Escape(alice.UserID)).Exists() {
			t.Fatalf("read receipt: %s", r.Get(room+".ephemeral").Raw)
		}
		// The private receipt goes to its owner only.
		s.MustOK("POST", path, alice.AccessToken, map[string]string{"m.read.private": msg2})
		syncUntil(t, s, alice, next, "", func(r gjson.Result) bool {
			return ephemeral(r, roomID, "m.receipt").Get(gjson.Escape(msg2) + ".m\\.read\\.private." + gjson.Escape(alice.UserID)).Exists()
		})

		s.ExpectError(403, "M_FORBIDDEN", "POST", path, bob.AccessToken, map[string]string{"m.fully_read": msg1})
		s.ExpectError(404, "M_NOT_FOUND", "POST", path, alice.AccessToken, map[string]string{"m.fully_read": msg1, "m.read": "$nope"})
		s.ExpectError(400, "M_BAD_JSON", "POST", path, alice.AccessToken, map[string]any{"m.fully_read": 5})
		s.ExpectError(400, "M_NOT_JSON", "POST", path, alice.AccessToken, "x")
		// Nothing was half done by the failed request.
		r = s.MustOK("GET", "/_matrix/client/v3/sync", alice.AccessToken, nil).JSON()
		if r.Get(room+".account_data.events.#(type==m.fully_read).content.event_id").String() != msg1 {
			t.Fatalf("fully read marker moved: %s", r.Get(room+".account_data").Raw)
		}
	})
}

func TestUnreadCounts(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := createRoom(t, s, alice.UserID)
		room := "rooms.join." + gjson.Escape(roomID)
		sendEvent(t, s, roomID, bob.UserID, "m.room.member", &bob.UserID, map[string]string{"membership": "join", "displayname": "Bobby Tables"})
		next := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool { return r.Get(room).Exists() }).Get("next_batch").String()
		counts := func(r gjson.Result) (int64, int64) {
			return r.Get(room + ".unread_notifications.notification_count").Int(), r.Get(room + ".unread_notifications.highlight_count").Int()
		}
		text := func(sender, body string) string {
			return sendEvent(t, s, roomID, sender, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": body})
		}

		text(alice.UserID, "hello")
		text(alice.UserID, "hey "+bob.UserID)
		text(alice.UserID, "what do you think, bobby tables?")
		sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.notice", "body": "a bot says"})
		text(bob.UserID, "my own message")
		last := text(alice.UserID, "bye")
		r := syncUntil(t, s, bob, next, "", func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + last + ")").Exists()
		})
		if n, h := counts(r); n != 4 || h != 2 {
			t.Fatalf("counts %d/%d, want 4/2: %s", n, h, r.Get(room+".unread_notifications").Raw)
		}
		// Alice's own counts leave out her own messages and count bob's.
		ra := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool { return r.Get(room).Exists() })
		if n, h := counts(ra); n != 1 || h != 0 {
			t.Fatalf("alice's counts %d/%d, want 1/0", n, h)
		}

		// A receipt on the last message clears them.
		next = r.Get("next_batch").String()
		s.MustOK("POST", receiptPath(roomID, "m.read", last), bob.AccessToken, map[string]any{})
		r = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		if n, h := counts(r); n != 0 || h != 0 {
			t.Fatalf("counts after the receipt %d/%d: %s", n, h, r.Get(room).Raw)
		}
		next = r.Get("next_batch").String()

		// A new message counts again; a private receipt clears it too.
		another := text(alice.UserID, "one more")
		r = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + another + ")").Exists()
		})
		if n, _ := counts(r); n != 1 {
			t.Fatalf("count %d after another message, want 1", n)
		}
		next = r.Get("next_batch").String()
		s.MustOK("POST", receiptPath(roomID, "m.read.private", another), bob.AccessToken, map[string]any{})
		r = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		if n, _ := counts(r); n != 0 {
			t.Fatalf("count %d after the private receipt, want 0", n)
		}
		next = r.Get("next_batch").String()

		// Threads: with unread_thread_notifications a thread has its own counts.
		threadFilter := "&filter=" + url.QueryEscape(`{"room":{"timeline":{"unread_thread_notifications":true}}}`)
		reply := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "psst " + bob.UserID,
			"m.relates_to": map[string]string{"rel_type": "m.thread", "event_id": another}})
		r = syncUntil(t, s, bob, next, threadFilter, func(r gjson.Result) bool {
			return r.Get(room + ".timeline.events.#(event_id==" + reply + ")").Exists()
		})
		thread := room + ".unread_thread_notifications." + gjson.Escape(another)
		if n, h := counts(r); n != 0 || h != 0 || r.Get(thread+".notification_count").Int() != 1 || r.Get(thread+".highlight_count").Int() != 1 {
			t.Fatalf("thread counts: %s", r.Get(room).Raw)
		}
		// Without the option the thread counts in the room.
		plain := syncUntil(t, s, bob, next, "", func(r gjson.Result) bool { return r.Get(room).Exists() })
		if n, h := counts(plain); n != 1 || h != 1 || plain.Get(room+".unread_thread_notifications").Exists() {
			t.Fatalf("room counts with a thread: %s", plain.Get(room).Raw)
		}
		next = r.Get("next_batch").String()
		// A main timeline receipt leaves the thread unread; a thread receipt clears it.
		s.MustOK("POST", receiptPath(roomID, "m.read", another), bob.AccessToken, map[string]string{"thread_id": "main"})
		r = syncUntil(t, s, bob, next, threadFilter, func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		if r.Get(thread+".notification_count").Int() != 1 {
			t.Fatalf("a main receipt cleared the thread: %s", r.Get(room).Raw)
		}
		next = r.Get("next_batch").String()
		s.MustOK("POST", receiptPath(roomID, "m.read", reply), bob.AccessToken, map[string]string{"thread_id": another})
		r = syncUntil(t, s, bob, next, threadFilter, func(r gjson.Result) bool { return ephemeral(r, roomID, "m.receipt").Exists() })
		if r.Get(room+".unread_thread_notifications").Exists() || r.Get(room+".unread_notifications.notification_count").Int() != 0 {
			t.Fatalf("the thread receipt did not clear the thread: %s", r.Get(room).Raw)
		}
	})
}
