package syncapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// createRoom makes a public room through the roomserver's Go API, so these
// tests do not depend on the createRoom endpoint.
func createRoom(t *testing.T, s *testserver.Server, creator string) string {
	t.Helper()
	roomID, err := s.Server.Roomserver.CreateRoom(context.Background(), rsapi.CreateRoomRequest{
		Version: "12", Creator: creator,
		InitialState: []rsapi.StateEvent{
			{Type: "m.room.member", StateKey: creator, Content: map[string]any{"membership": "join"}},
			{Type: "m.room.power_levels", Content: map[string]any{"users": map[string]int{}, "events_default": 0, "state_default": 50}},
			{Type: "m.room.join_rules", Content: map[string]any{"join_rule": "public"}},
			{Type: "m.room.history_visibility", Content: map[string]any{"history_visibility": "shared"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return roomID
}

func sendEvent(t *testing.T, s *testserver.Server, roomID, sender, evType string, stateKey *string, content any) string {
	t.Helper()
	raw, _ := json.Marshal(content)
	ev, err := s.Server.Roomserver.SendEvent(context.Background(), rsapi.NewEvent{RoomID: roomID, Sender: sender, Type: evType, StateKey: stateKey, Content: raw})
	if err != nil {
		t.Fatal(err)
	}
	return ev.EventID()
}

func setMembership(t *testing.T, s *testserver.Server, roomID, sender, target, membership string) string {
	return sendEvent(t, s, roomID, sender, "m.room.member", &target, map[string]string{"membership": membership})
}

// syncUntil syncs until cond holds for the response (the consumer copies
// events asynchronously), failing after a few seconds.
func syncUntil(t *testing.T, s *testserver.Server, u *testserver.User, since string, params string, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		path := "/_matrix/client/v3/sync?timeout=1000" + params
		if since != "" {
			path += "&since=" + url.QueryEscape(since)
		}
		r := s.MustOK("GET", path, u.AccessToken, nil).JSON()
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("sync never satisfied the condition; last response: %s", r.Raw)
		}
	}
}

func TestInitialAndIncrementalSync(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		roomID := createRoom(t, s, alice.UserID)
		name := ""
		sendEvent(t, s, roomID, alice.UserID, "m.room.name", &name, map[string]string{"name": "Tea"})
		msg := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hello"})

		rooms := "rooms.join." + gjson.Escape(roomID)
		r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
			return r.Get(rooms + ".timeline.events.#(event_id==" + msg + ")").Exists()
		})
		if r.Get(rooms+".summary.m\\.joined_member_count").Int() != 1 {
			t.Errorf("summary: %s", r.Get(rooms+".summary").Raw)
		}
		// Everything before the timeline is in the state section or the timeline.
		seenName := r.Get(rooms+".state.events.#(type==m.room.name).content.name").String() == "Tea" ||
			r.Get(rooms+".timeline.events.#(type==m.room.name).content.name").String() == "Tea"
		if !seenName {
			t.Errorf("room name missing from initial sync: %s", r.Get(rooms).Raw)
		}
		next := r.Get("next_batch").String()

		// Bob joins and speaks; alice's incremental sync sees just that.
		setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
		bobMsg := sendEvent(t, s, roomID, bob.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "hi alice"})
		r = syncUntil(t, s, alice, next, "", func(r gjson.Result) bool {
			return r.Get(rooms + ".timeline.events.#(event_id==" + bobMsg + ")").Exists()
		})
		if got := r.Get(rooms + ".timeline.events.#").Int(); got != 2 {
			t.Errorf("incremental timeline has %d events, want bob's join and message: %s", got, r.Get(rooms+".timeline").Raw)
		}
		if r.Get(rooms + ".timeline.limited").Bool() {
			t.Error("incremental timeline limited")
		}
		// The membership changed: the summary has the new counts.
		if got := r.Get(rooms + ".summary.m\\.joined_member_count").Int(); got != 2 {
			t.Errorf("summary after bob joined: %s", r.Get(rooms+".summary").Raw)
		}
		// Only a message since: the summary, unchanged, is left out.
		next = r.Get("next_batch").String()
		another := sendEvent(t, s, roomID, bob.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "again"})
		r = syncUntil(t, s, alice, next, "", func(r gjson.Result) bool {
			return r.Get(rooms + ".timeline.events.#(event_id==" + another + ")").Exists()
		})
		if sum := r.Get(rooms + ".summary"); len(sum.Map()) != 0 {
			t.Errorf("summary of a sync with no state change: %s", sum.Raw)
		}
		// Bob, newly joined, gets the room with its full state.
		rb := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool { return r.Get(rooms).Exists() })
		if !rb.Get(rooms+".state.events.#(type==m.room.create)").Exists() && !rb.Get(rooms+".timeline.events.#(type==m.room.create)").Exists() {
			t.Errorf("bob's initial sync lacks the create event: %s", rb.Get(rooms).Raw)
		}
	})
}

func TestSyncLongPollWakesOnNewEvent(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := createRoom(t, s, alice.UserID)
	// Wait until the whole room creation has been consumed.
	r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(type==m.room.history_visibility)").Exists()
	})
	next := r.Get("next_batch").String()

	done := make(chan gjson.Result, 1)
	start := time.Now()
	go func() {
		done <- s.MustOK("GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(next), alice.AccessToken, nil).JSON()
	}()
	time.Sleep(200 * time.Millisecond)
	msg := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "wake up"})
	select {
	case got := <-done:
		if !got.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + msg + ")").Exists() {
			t.Fatalf("woken sync lacks the event: %s", got.Raw)
		}
		if time.Since(start) > 15*time.Second {
			t.Fatal("the long poll was not woken by the event")
		}
	case <-time.After(25 * time.Second):
		t.Fatal("long poll never returned")
	}
}

func TestTimelineLimitAndGappyState(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := createRoom(t, s, alice.UserID)
	rooms := "rooms.join." + gjson.Escape(roomID)
	filter := url.QueryEscape(`{"room":{"timeline":{"limit":2}}}`)
	r := syncUntil(t, s, alice, "", "&filter="+filter, func(r gjson.Result) bool { return r.Get(rooms).Exists() })
	next := r.Get("next_batch").String()

	topic := ""
	sendEvent(t, s, roomID, alice.UserID, "m.room.topic", &topic, map[string]string{"topic": "gap"})
	for i := 0; i < 5; i++ {
		sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]any{"body": i})
	}
	last := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "last"})
	r = syncUntil(t, s, alice, next, "&filter="+filter, func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + last + ")").Exists()
	})
	if n := r.Get(rooms + ".timeline.events.#").Int(); n != 2 || !r.Get(rooms+".timeline.limited").Bool() {
		t.Fatalf("want a limited timeline of 2: %s", r.Get(rooms+".timeline").Raw)
	}
	// The topic changed in the gap: it must come in the state section.
	if r.Get(rooms+".state.events.#(type==m.room.topic).content.topic").String() != "gap" {
		t.Fatalf("gappy sync lost the topic change: %s", r.Get(rooms+".state").Raw)
	}
	prev := r.Get(rooms + ".timeline.prev_batch").String()
	if prev == "" {
		t.Fatal("no prev_batch")
	}
}

func TestInviteAndLeaveSections(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := createRoom(t, s, alice.UserID)
	esc := gjson.Escape(roomID)
	rb := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool { return r.Get("next_batch").Exists() })
	next := rb.Get("next_batch").String()

	setMembership(t, s, roomID, alice.UserID, bob.UserID, "invite")
	rb = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool { return r.Get("rooms.invite." + esc).Exists() })
	if !rb.Get("rooms.invite." + esc + ".invite_state.events.#(type==m.room.member).content.membership").Exists() {
		t.Fatalf("invite_state lacks the invite: %s", rb.Get("rooms.invite").Raw)
	}
	if !rb.Get("rooms.invite." + esc + ".invite_state.events.#(type==m.room.join_rules)").Exists() {
		t.Fatalf("invite_state lacks the join rules: %s", rb.Get("rooms.invite").Raw)
	}
	next = rb.Get("next_batch").String()
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	rb = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool { return r.Get("rooms.join." + esc).Exists() })
	next = rb.Get("next_batch").String()
	setMembership(t, s, roomID, alice.UserID, bob.UserID, "ban")
	rb = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool { return r.Get("rooms.leave." + esc).Exists() })
	if rb.Get("rooms.join." + esc).Exists() {
		t.Fatal("a banned user still sees the room as joined")
	}
	if rb.Get("rooms.leave."+esc+".timeline.events.@reverse.0.content.membership").String() != "ban" {
		t.Fatalf("leave timeline does not end with the ban: %s", rb.Get("rooms.leave").Raw)
	}
}

func TestSyncAccountDataAndErrors(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool { return r.Get("next_batch").Exists() })
	next := r.Get("next_batch").String()
	s.MustOK("PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/account_data/org.example.x", alice.AccessToken, map[string]int{"a": 1})
	r = syncUntil(t, s, alice, next, "", func(r gjson.Result) bool {
		return r.Get("account_data.events.#(type==org.example.x).content.a").Int() == 1
	})
	// With nothing new, a zero-timeout sync comes back empty at once.
	r2 := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(r.Get("next_batch").String()), alice.AccessToken, nil)
	if r2.Get("account_data.events.#").Int() != 0 {
		t.Fatalf("account data repeated: %s", r2)
	}
	s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/sync?since=garbage", alice.AccessToken, nil)
	s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/sync?timeout=-5", alice.AccessToken, nil)
	s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/sync?filter=999", alice.AccessToken, nil)
	s.ExpectError(400, "M_BAD_JSON", "GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(`{"room":{"timeline":{"limit":"x"}}}`), alice.AccessToken, nil)
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/sync", "", nil)
}

func TestSyncEventFieldsAndFormat(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := createRoom(t, s, alice.UserID)
	msg := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"msgtype": "m.text", "body": "x"})
	rooms := "rooms.join." + gjson.Escape(roomID)
	fields := url.QueryEscape(`{"event_fields":["type","content.body"]}`)
	r := syncUntil(t, s, alice, "", "&filter="+fields, func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(content.body==x)").Exists()
	})
	ev := r.Get(rooms + ".timeline.events.#(content.body==x)")
	if ev.Get("event_id").Exists() || ev.Get("sender").Exists() || ev.Get("type").String() != "m.room.message" {
		t.Fatalf("event_fields not applied: %s", ev.Raw)
	}
	fed := url.QueryEscape(`{"event_format":"federation"}`)
	r = syncUntil(t, s, alice, "", "&filter="+fed, func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(content.body==x)").Exists()
	})
	ev = r.Get(rooms + ".timeline.events.#(content.body==x)")
	if !ev.Get("hashes").Exists() || !ev.Get("signatures").Exists() || !ev.Get("room_id").Exists() {
		t.Fatalf("federation format lacks hashes/signatures: %s", ev.Raw)
	}
	_ = msg
}

func TestLeaveAndRejoinInOneWindowGivesFullState(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := createRoom(t, s, alice.UserID)
	rooms := "rooms.join." + gjson.Escape(roomID)
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	r := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool { return r.Get(rooms).Exists() })
	next := r.Get("next_batch").String()
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "leave")
	rejoin := setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	r = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + rejoin + ")").Exists()
	})
	hasCreate := r.Get(rooms+".state.events.#(type==m.room.create)").Exists() || r.Get(rooms+".timeline.events.#(type==m.room.create)").Exists()
	if !hasCreate {
		t.Fatalf("rejoined room lacks its full state: %s", r.Get(rooms).Raw)
	}
}

func TestLazyLoadedMembersAcrossIncrementalSyncs(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := createRoom(t, s, alice.UserID)
	rooms := "rooms.join." + gjson.Escape(roomID)
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	lazy := url.QueryEscape(`{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true}}}`)
	// Alice's initial sync: bob's join is out of the timeline and he has
	// not spoken, so his member event is left out.
	sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "0"})
	opener := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "1"})
	r := syncUntil(t, s, alice, "", "&filter="+lazy, func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + opener + ")").Exists()
	})
	bobMember := rooms + `.state.events.#(state_key==` + bob.UserID + `)`
	if r.Get(bobMember).Exists() {
		t.Fatalf("bob's member event sent though he has not spoken: %s", r.Get(rooms+".state").Raw)
	}
	next := r.Get("next_batch").String()
	// A gap, then bob speaks: his member event must come with it.
	for i := 0; i < 3; i++ {
		sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]any{"body": i})
	}
	said := sendEvent(t, s, roomID, bob.UserID, "m.room.message", nil, map[string]string{"body": "bob speaks"})
	r = syncUntil(t, s, alice, next, "&filter="+lazy, func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + said + ")").Exists()
	})
	if !r.Get(bobMember).Exists() {
		t.Fatalf("gappy lazy sync lacks the speaker's member event: %s", r.Get(rooms).Raw)
	}
	next = r.Get("next_batch").String()
	// He speaks again: the device has his member event, so not again...
	said = sendEvent(t, s, roomID, bob.UserID, "m.room.message", nil, map[string]string{"body": "again"})
	r = syncUntil(t, s, alice, next, "&filter="+lazy, func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + said + ")").Exists()
	})
	if r.Get(bobMember).Exists() {
		t.Fatalf("redundant member event sent: %s", r.Get(rooms+".state").Raw)
	}
	// ...unless the client asks for redundant members.
	redundant := url.QueryEscape(`{"room":{"timeline":{"limit":2},"state":{"lazy_load_members":true,"include_redundant_members":true}}}`)
	r = syncUntil(t, s, alice, next, "&filter="+redundant, func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + said + ")").Exists()
	})
	if !r.Get(bobMember).Exists() {
		t.Fatalf("include_redundant_members ignored: %s", r.Get(rooms+".state").Raw)
	}
}

func TestUnlimitedTimelinePrevBatchPagesBack(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	roomID := createRoom(t, s, alice.UserID)
	msg := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "here"})
	rooms := "rooms.join." + gjson.Escape(roomID)
	r := syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + msg + ")").Exists()
	})
	if r.Get(rooms + ".timeline.limited").Bool() {
		t.Skip("timeline unexpectedly limited")
	}
	prev := r.Get(rooms + ".timeline.prev_batch").String()
	m := s.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&from="+url.QueryEscape(prev), alice.AccessToken, nil)
	if m.Get("chunk.0.event_id").String() != msg {
		t.Fatalf("paging back from an unlimited timeline's prev_batch: %s", m)
	}
}

func TestIgnoredUsersAndHistoryVisibilityInSync(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	carol := s.Register("carol", "pw")
	roomID := createRoom(t, s, alice.UserID)
	rooms := "rooms.join." + gjson.Escape(roomID)
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	// Joined-only history: carol must not see what came before her join.
	hv := ""
	sendEvent(t, s, roomID, alice.UserID, "m.room.history_visibility", &hv, map[string]string{"history_visibility": "joined"})
	secret := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "before carol"})
	setMembership(t, s, roomID, carol.UserID, carol.UserID, "join")
	hello := sendEvent(t, s, roomID, bob.UserID, "m.room.message", nil, map[string]string{"body": "hi carol"})
	r := syncUntil(t, s, carol, "", "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + hello + ")").Exists()
	})
	if r.Get(rooms + ".timeline.events.#(event_id==" + secret + ")").Exists() {
		t.Fatal("carol sees history from before she joined a joined-only room")
	}
	// Alice ignores bob: his messages vanish from her syncs.
	s.MustOK("PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID)+"/account_data/m.ignored_user_list", alice.AccessToken,
		map[string]any{"ignored_users": map[string]any{bob.UserID: map[string]any{}}})
	mine := sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]string{"body": "mine"})
	r = syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + mine + ")").Exists()
	})
	if r.Get(rooms + ".timeline.events.#(event_id==" + hello + ")").Exists() {
		t.Fatal("an ignored user's message is in the timeline")
	}
	// Heroes only for rooms without a name.
	if r.Get(rooms+".summary.m\\.heroes").Exists() != true {
		t.Fatalf("unnamed room lacks heroes: %s", r.Get(rooms+".summary").Raw)
	}
	name := ""
	named := sendEvent(t, s, roomID, alice.UserID, "m.room.name", &name, map[string]string{"name": "Named"})
	r = syncUntil(t, s, alice, "", "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + named + ")").Exists()
	})
	if r.Get(rooms + ".summary.m\\.heroes").Exists() {
		t.Fatalf("named room has heroes: %s", r.Get(rooms+".summary").Raw)
	}
}

// A member who joined while the user was away from a joined-only room is
// hidden from the user's timeline, but the user must still learn of them:
// their current member event comes in the state.
func TestHiddenStateChangesReachTheStateSection(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	carol := s.Register("carol", "pw")
	roomID := createRoom(t, s, alice.UserID)
	rooms := "rooms.join." + gjson.Escape(roomID)
	hv := ""
	sendEvent(t, s, roomID, alice.UserID, "m.room.history_visibility", &hv, map[string]string{"history_visibility": "joined"})
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	r := syncUntil(t, s, bob, "", "", func(r gjson.Result) bool { return r.Get(rooms).Exists() })
	next := r.Get("next_batch").String()
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "leave")
	carolJoin := setMembership(t, s, roomID, carol.UserID, carol.UserID, "join")
	rejoin := setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	r = syncUntil(t, s, bob, next, "", func(r gjson.Result) bool {
		return r.Get(rooms + ".timeline.events.#(event_id==" + rejoin + ")").Exists()
	})
	inTimeline := r.Get(rooms + ".timeline.events.#(event_id==" + carolJoin + ")").Exists()
	inState := r.Get(rooms + ".state.events.#(event_id==" + carolJoin + ")").Exists()
	if !inTimeline && !inState {
		t.Fatalf("carol's join is nowhere in bob's sync: %s", r.Get(rooms).Raw)
	}
}
