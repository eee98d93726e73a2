package syncapi_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

// Pushes to push gateways, driven over HTTP: a user sets an http pusher
// whose URL is a gateway run by the test on loopback, another user writes
// to them, and the gateway receives the Push Gateway API's notification.

// fakeGateway is a push gateway that records what it is sent.
type fakeGateway struct {
	*httptest.Server
	got chan gjson.Result
	// fail answers 500 to that many requests first; down answers 503 to
	// all while set; reject answers every pushkey rejected.
	fail     atomic.Int32
	down     atomic.Bool
	reject   atomic.Bool
	requests atomic.Int32
	// hang, when set, holds every request until it is closed.
	hang   chan struct{}
	mu     sync.Mutex
	events map[string]int // successful deliveries per event ID
}

func newFakeGateway(t *testing.T) *fakeGateway {
	g := &fakeGateway{got: make(chan gjson.Result, 100), events: map[string]int{}}
	g.Server = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(g.Close)
	return g
}

func (g *fakeGateway) serve(w http.ResponseWriter, r *http.Request) {
	g.requests.Add(1)
	if r.URL.Path != "/_matrix/push/v1/notify" || r.Method != http.MethodPost {
		http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, http.StatusNotFound)
		return
	}
	body, _ := io.ReadAll(r.Body)
	if g.hang != nil {
		select {
		case <-g.hang:
		case <-r.Context().Done():
		}
		http.Error(w, "too late", http.StatusServiceUnavailable)
		return
	}
	if g.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	if g.fail.Add(-1) >= 0 {
		http.Error(w, "failing", http.StatusInternalServerError)
		return
	}
	n := gjson.GetBytes(body, "notification")
	g.mu.Lock()
	g.events[n.Get("event_id").String()]++
	g.mu.Unlock()
	g.got <- n
	w.Header().Set("Content-Type", "application/json")
	if g.reject.Load() {
		_, _ = w.Write([]byte(`{"rejected":["` + n.Get("devices.0.pushkey").String() + `"]}`))
		return
	}
	_, _ = w.Write([]byte(`{"rejected":[]}`))
}

func (g *fakeGateway) notifyURL() string { return g.URL + "/_matrix/push/v1/notify" }

func (g *fakeGateway) deliveries(eventID string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.events[eventID]
}

// next waits for the next notification delivered.
func (g *fakeGateway) next(t *testing.T, within time.Duration) gjson.Result {
	t.Helper()
	select {
	case n := <-g.got:
		return n
	case <-time.After(within):
		t.Fatalf("no push within %s", within)
		return gjson.Result{}
	}
}

func setPusher(t *testing.T, s *testserver.Server, u *testserver.User, appID, pushKey string, data map[string]any) {
	t.Helper()
	s.MustOK("POST", "/_matrix/client/v3/pushers/set", u.AccessToken, map[string]any{
		"kind": "http", "app_id": appID, "pushkey": pushKey, "app_display_name": "Test", "device_display_name": "phone",
		"lang": "en", "data": data,
	})
}

func pusherKeys(s *testserver.Server, u *testserver.User) []string {
	var keys []string
	s.MustOK("GET", "/_matrix/client/v3/pushers", u.AccessToken, nil).Get("pushers.#.pushkey").ForEach(func(_, v gjson.Result) bool {
		keys = append(keys, v.String())
		return true
	})
	return keys
}

func TestPushGatewayDelivers(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		s.MustOK("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(alice.UserID)+"/displayname", alice.AccessToken,
			map[string]string{"displayname": "Alice A."})
		before := time.Now().Unix()
		setPusher(t, s, bob, "org.example.app", "bobs-key", map[string]any{"url": gw.notifyURL(), "custom": "kept"})
		roomID := pushRoom(t, s, alice, bob)
		s.MustOK("PUT", roomPath(roomID, "/state/m.room.name/"), alice.AccessToken, map[string]any{"name": "Chat"})

		// A mention: a highlight with a sound (.m.rule.is_user_mention).
		mention := pushText(t, s, alice, roomID, "hi bob", map[string]any{"m.mentions": map[string]any{"user_ids": []string{bob.UserID}}})
		n := gw.next(t, 10*time.Second)
		for path, want := range map[string]string{
			"event_id": mention, "room_id": roomID, "type": "m.room.message", "sender": alice.UserID,
			"sender_display_name": "Alice A.", "room_name": "Chat", "prio": "high", "content.body": "hi bob",
			"devices.0.app_id": "org.example.app", "devices.0.pushkey": "bobs-key", "devices.0.data.custom": "kept",
			"devices.0.tweaks.sound": "default",
		} {
			if got := n.Get(path).String(); got != want {
				t.Errorf("%s = %q, want %q in %s", path, got, want, n.Raw)
			}
		}
		if n.Get("id").String() != mention || n.Get("user_is_target").Exists() {
			t.Errorf("id or user_is_target wrong: %s", n.Raw)
		}
		if n.Get("counts.unread").Int() != 1 || !n.Get("devices.0.tweaks.highlight").Bool() || n.Get("devices.0.data.url").Exists() {
			t.Errorf("counts, highlight or data wrong: %s", n.Raw)
		}
		if ts := n.Get("devices.0.pushkey_ts").Int(); ts < before-1 || ts > time.Now().Unix()+1 {
			t.Errorf("pushkey_ts %d is not the pusher's creation in seconds", ts)
		}
		if len(n.Get("devices").Array()) != 1 {
			t.Errorf("devices: %s", n.Get("devices").Raw)
		}

		// bob's own message is not pushed to him: the next push is
		// alice's plain message (a pusher's pushes come in order), which
		// has no tweaks and counts two unread.
		pushText(t, s, bob, roomID, "my own", nil)
		plain := pushText(t, s, alice, roomID, "plain", nil)
		n = gw.next(t, 10*time.Second)
		if n.Get("event_id").String() != plain || n.Get("counts.unread").Int() != 2 || n.Get("devices.0.tweaks.highlight").Exists() {
			t.Fatalf("second push %s, want %s with 2 unread and no highlight", n.Raw, plain)
		}

		// When bob reads up to it, his devices get a badge update with
		// counts alone, and the count starts again from there.
		s.MustOK("POST", roomPath(roomID, "/receipt/m.read/"+url.PathEscape(plain)), bob.AccessToken, map[string]any{})
		n = gw.next(t, 10*time.Second)
		if n.Get("event_id").Exists() || n.Get("type").Exists() || !n.Get("counts.unread").Exists() ||
			n.Get("counts.unread").Int() != 0 || n.Get("devices.0.pushkey").String() != "bobs-key" {
			t.Fatalf("badge update %s, want counts.unread 0 alone", n.Raw)
		}
		third := pushText(t, s, alice, roomID, "again", nil)
		n = gw.next(t, 10*time.Second)
		if n.Get("event_id").String() != third || n.Get("counts.unread").Int() != 1 {
			t.Fatalf("third push %s, want %s with 1 unread", n.Raw, third)
		}
		// Nobody but bob has a pusher; alice is never pushed to.
		select {
		case n := <-gw.got:
			t.Fatalf("unexpected push %s", n.Raw)
		case <-time.After(300 * time.Millisecond):
		}
	})
}

func TestPushGatewayEventIDOnly(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		setPusher(t, s, bob, "org.example.app", "k", map[string]any{"url": gw.notifyURL(), "format": "event_id_only"})
		roomID := pushRoom(t, s, alice, bob)
		ev := pushText(t, s, alice, roomID, "secret", nil)
		n := gw.next(t, 10*time.Second)
		if n.Get("event_id").String() != ev || n.Get("room_id").String() != roomID || n.Get("counts.unread").Int() != 1 {
			t.Fatalf("push %s", n.Raw)
		}
		for _, f := range []string{"type", "sender", "content", "sender_display_name", "room_name"} {
			if n.Get(f).Exists() {
				t.Errorf("event_id_only push has %s: %s", f, n.Raw)
			}
		}
		if n.Get("devices.0.data.format").String() != "event_id_only" || n.Get("devices.0.data.url").Exists() {
			t.Errorf("device data %s", n.Get("devices.0.data").Raw)
		}
	})
}

func TestPushGatewayRejectedRemovesPusher(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		gw.reject.Store(true)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		setPusher(t, s, bob, "org.example.app", "expired-key", map[string]any{"url": gw.notifyURL()})
		roomID := pushRoom(t, s, alice, bob)
		pushText(t, s, alice, roomID, "one", nil)
		gw.next(t, 10*time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for len(pusherKeys(s, bob)) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("rejected pusher still listed: %v", pusherKeys(s, bob))
			}
			time.Sleep(50 * time.Millisecond)
		}
		// And it is pushed to no more.
		pushText(t, s, alice, roomID, "two", nil)
		select {
		case n := <-gw.got:
			t.Fatalf("push to a removed pusher: %s", n.Raw)
		case <-time.After(time.Second):
		}
	})
}

func TestPushGatewayRetriesFailures(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		gw.fail.Store(2)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		setPusher(t, s, bob, "org.example.app", "k", map[string]any{"url": gw.notifyURL()})
		roomID := pushRoom(t, s, alice, bob)
		ev := pushText(t, s, alice, roomID, "through the outage", nil)
		// Two failures: retried after 1 s and 2 s.
		n := gw.next(t, 15*time.Second)
		if n.Get("event_id").String() != ev {
			t.Fatalf("push %s, want %s", n.Raw, ev)
		}
		time.Sleep(1500 * time.Millisecond)
		if got, reqs := gw.deliveries(ev), gw.requests.Load(); got != 1 || reqs != 3 {
			t.Fatalf("delivered %d times in %d requests, want once in 3", got, reqs)
		}
	})
}

func TestPushGatewayGivesUpAndGoesOn(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		gw.down.Store(true)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		setPusher(t, s, bob, "org.example.app", "k", map[string]any{"url": gw.notifyURL()})
		roomID := pushRoom(t, s, alice, bob)
		lost := pushText(t, s, alice, roomID, "while down", nil)
		// Tried at 0, 1 s and 3 s at most: given up within retry_for (3 s).
		time.Sleep(3500 * time.Millisecond)
		tries := gw.requests.Load()
		if tries < 2 {
			t.Fatalf("%d attempts while the gateway was down, want retries", tries)
		}
		gw.down.Store(false)
		later := pushText(t, s, alice, roomID, "back up", nil)
		n := gw.next(t, 10*time.Second)
		if n.Get("event_id").String() != later || gw.deliveries(lost) != 0 {
			t.Fatalf("push %s, want only %s (the one given up not sent)", n.Raw, later)
		}
	}, func(c *config.Config) { c.Push.RetryFor = config.Duration(3 * time.Second) })
}

func TestPushGatewayResumesAfterRestart(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		gw.down.Store(true)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		setPusher(t, s, bob, "org.example.app", "k", map[string]any{"url": gw.notifyURL()})
		roomID := pushRoom(t, s, alice, bob)
		first := pushText(t, s, alice, roomID, "first", nil)
		second := pushText(t, s, alice, roomID, "second", nil)
		deadline := time.Now().Add(10 * time.Second)
		for gw.requests.Load() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the gateway was never tried")
			}
			time.Sleep(20 * time.Millisecond)
		}
		s.Restart()
		gw.down.Store(false)
		got := map[string]bool{}
		for len(got) < 2 {
			n := gw.next(t, 15*time.Second)
			got[n.Get("event_id").String()] = true
		}
		if !got[first] || !got[second] {
			t.Fatalf("after the restart got %v, want %s and %s", got, first, second)
		}
	})
}

func TestPushGatewayOtherPushersNotHeldUp(t *testing.T) {
	s := testserver.New(t)
	// bob's gateway takes requests and never answers (each waits out the
	// 10 s request timeout); carol's pushes go on meanwhile.
	dead := newFakeGateway(t)
	dead.hang = make(chan struct{})
	t.Cleanup(func() { close(dead.hang) })
	live := newFakeGateway(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	carol := s.Register("carol", "pw")
	setPusher(t, s, bob, "org.example.app", "bob", map[string]any{"url": dead.notifyURL()})
	setPusher(t, s, carol, "org.example.app", "carol", map[string]any{"url": live.notifyURL()})
	roomID := pushRoom(t, s, alice, bob, carol)
	for i := 0; i < 3; i++ {
		ev := pushText(t, s, alice, roomID, "hello", nil)
		if n := live.next(t, 5*time.Second); n.Get("event_id").String() != ev {
			t.Fatalf("carol's push %s, want %s", n.Raw, ev)
		}
	}
	if dead.requests.Load() == 0 {
		t.Fatal("bob's gateway was never asked")
	}
}

func TestPushGatewayLogoutRemovesPushers(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		phone := s.Login("bob", "pw")
		setPusher(t, s, phone, "org.example.app", "phone", map[string]any{"url": gw.notifyURL()})
		setPusher(t, s, bob, "org.example.app", "laptop", map[string]any{"url": gw.notifyURL()})
		s.MustOK("POST", "/_matrix/client/v3/logout", phone.AccessToken, map[string]any{})
		if keys := pusherKeys(s, bob); len(keys) != 1 || keys[0] != "laptop" {
			t.Fatalf("pushers after the phone logged out: %v", keys)
		}
		roomID := pushRoom(t, s, alice, bob)
		pushText(t, s, alice, roomID, "hi", nil)
		if n := gw.next(t, 10*time.Second); n.Get("devices.0.pushkey").String() != "laptop" {
			t.Fatalf("push %s", n.Raw)
		}
		select {
		case n := <-gw.got:
			t.Fatalf("a second push: %s", n.Raw)
		case <-time.After(500 * time.Millisecond):
		}
		// Logging out everywhere removes the rest.
		s.MustOK("POST", "/_matrix/client/v3/logout/all", bob.AccessToken, map[string]any{})
		other := s.Login("bob", "pw")
		if keys := pusherKeys(s, other); len(keys) != 0 {
			t.Fatalf("pushers after logout/all: %v", keys)
		}
	})
}

// An https gateway whose certificate a CA in federation.ca_file signed.
func TestPushGatewayTLS(t *testing.T) {
	ca := testserver.NewCA(t)
	certFile, keyFile := ca.Issue(t, "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	gw := &fakeGateway{got: make(chan gjson.Result, 10), events: map[string]int{}}
	gw.Server = httptest.NewUnstartedServer(http.HandlerFunc(gw.serve))
	gw.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	gw.StartTLS()
	t.Cleanup(gw.Close)
	s := testserver.New(t, func(c *config.Config) { c.Federation.CAFile = ca.CertFile })
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	setPusher(t, s, bob, "org.example.app", "k", map[string]any{"url": gw.notifyURL()})
	roomID := pushRoom(t, s, alice, bob)
	ev := pushText(t, s, alice, roomID, "over tls", nil)
	if n := gw.next(t, 10*time.Second); n.Get("event_id").String() != ev {
		t.Fatalf("push %s", n.Raw)
	}
}

// An invite is pushed to the invitee, who is its target; a room without a
// name is named by its canonical alias.
func TestPushGatewayInvite(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		setPusher(t, s, bob, "org.example.app", "k", map[string]any{"url": gw.notifyURL()})
		roomID := s.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken,
			map[string]any{"preset": "private_chat", "room_alias_name": "hideout"}).Get("room_id").String()
		s.MustOK("POST", roomPath(roomID, "/invite"), alice.AccessToken, map[string]any{"user_id": bob.UserID})
		n := gw.next(t, 10*time.Second)
		if n.Get("type").String() != "m.room.member" || n.Get("membership").String() != "invite" ||
			!n.Get("user_is_target").Bool() || n.Get("room_id").String() != roomID || n.Get("sender").String() != alice.UserID ||
			n.Get("content.membership").String() != "invite" || n.Get("prio").String() != "high" ||
			n.Get("room_name").String() != "#hideout:"+s.ServerName() || n.Get("room_alias").String() != "#hideout:"+s.ServerName() {
			t.Fatalf("invite push %s", n.Raw)
		}
	})
}

// A notification the user reads while their gateway is failing is not
// pushed when the gateway comes back; the badge update is.
func TestPushGatewayReadWhileFailing(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		gw := newFakeGateway(t)
		gw.down.Store(true)
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		setPusher(t, s, bob, "org.example.app", "k", map[string]any{"url": gw.notifyURL()})
		roomID := pushRoom(t, s, alice, bob)
		ev := pushText(t, s, alice, roomID, "read elsewhere", nil)
		deadline := time.Now().Add(10 * time.Second)
		for gw.requests.Load() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the gateway was never tried")
			}
			time.Sleep(20 * time.Millisecond)
		}
		s.MustOK("POST", roomPath(roomID, "/receipt/m.read/"+url.PathEscape(ev)), bob.AccessToken, map[string]any{})
		gw.down.Store(false)
		n := gw.next(t, 10*time.Second)
		if n.Get("event_id").Exists() || n.Get("counts.unread").Int() != 0 || !n.Get("counts.unread").Exists() {
			t.Fatalf("push %s, want only the badge update", n.Raw)
		}
		if gw.deliveries(ev) != 0 {
			t.Fatal("the read notification was pushed")
		}
	})
}

// TestPushGatewayNewPusherGetsNothingFromBefore: a pusher set up just
// after a message and a read receipt is sent neither the message's
// notification nor a badge update for the receipt (both were recorded
// before it existed), only what comes after it.
func TestPushGatewayNewPusherGetsNothingFromBefore(t *testing.T) {
	s := testserver.New(t)
	gw := newFakeGateway(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := pushRoom(t, s, alice, bob)
	read := pushText(t, s, alice, roomID, "read", nil)
	pushCounts(t, s, bob, roomID, read, "")
	s.MustOK("POST", roomPath(roomID, "/receipt/m.read/"+url.PathEscape(read)), bob.AccessToken, map[string]any{})
	old := pushText(t, s, alice, roomID, "old", nil)
	pushCounts(t, s, bob, roomID, old, "") // its notification is recorded
	setPusher(t, s, bob, "org.example.app", "new-key", map[string]any{"url": gw.notifyURL()})
	fresh := pushText(t, s, alice, roomID, "new", nil)
	n := gw.next(t, 10*time.Second)
	if n.Get("event_id").String() != fresh {
		t.Fatalf("first push to the new pusher: %s, want only the message sent after it (%s)", n.Raw, fresh)
	}
	select {
	case n := <-gw.got:
		t.Fatalf("another push: %s", n.Raw)
	case <-time.After(300 * time.Millisecond):
	}
}
