package federationapi_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/roomserver/testroom"
)

// Inbound transactions, driven by a homeserver the test plays (txOrigin)
// towards a real one.

// txServerKey is a real server's signing key as a testroom server, so
// that testroom builds events of its users.
func txServerKey(s *testserver.Server) *testroom.Server {
	priv := s.Server.Key.PrivateKey
	return &testroom.Server{
		Name: spec.ServerName(s.ServerName()), KeyID: gomatrixserverlib.KeyID(s.Server.Key.ID),
		PrivateKey: priv, PublicKey: priv.Public().(ed25519.PublicKey),
	}
}

// txSyncUntil syncs as u from *since (moving it on) until cond holds for
// one response, which it returns.
func txSyncUntil(t *testing.T, s *testserver.Server, u *testserver.User, since *string, what string, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		path := "/_matrix/client/v3/sync?timeout=500"
		if *since != "" {
			path += "&since=" + url.QueryEscape(*since)
		}
		r := s.MustOK("GET", path, u.AccessToken, nil).JSON()
		*since = r.Get("next_batch").Str
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// txMessages syncs until n m.room.message bodies of a room arrived and
// returns them in order.
func txMessages(t *testing.T, s *testserver.Server, u *testserver.User, since *string, roomID string, n int) []string {
	t.Helper()
	var bodies []string
	txSyncUntil(t, s, u, since, fmt.Sprintf("%d messages in %s", n, roomID), func(r gjson.Result) bool {
		for _, ev := range r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events").Array() {
			if ev.Get("type").Str == "m.room.message" {
				bodies = append(bodies, ev.Get("content.body").Str)
			}
		}
		return len(bodies) >= n
	})
	return bodies
}

// txEphemeral syncs until an ephemeral event of a type in the room
// satisfies cond.
func txEphemeral(t *testing.T, s *testserver.Server, u *testserver.User, since *string, roomID, evType string, cond func(content gjson.Result) bool) {
	t.Helper()
	txSyncUntil(t, s, u, since, evType+" in "+roomID, func(r gjson.Result) bool {
		for _, ev := range r.Get("rooms.join." + gjson.Escape(roomID) + ".ephemeral.events").Array() {
			if ev.Get("type").Str == evType && cond(ev.Get("content")) {
				return true
			}
		}
		return false
	})
}

// txFixture: a real server B whose user bob has joined a room of the
// fake origin's user carol.
type txFixture struct {
	t      *testing.T
	b      *testserver.Server
	bob    *testserver.User
	bobKey *testroom.User // bob, to build his events
	f      *txOrigin
	carol  *testroom.User
	room   *testroom.Room
	since  string
	txns   int
}

func newTxFixture(t *testing.T, version string) *txFixture {
	ca := testserver.NewCA(t)
	b := testserver.NewTLS(t, ca)
	f := newTxOrigin(t, ca)
	x := &txFixture{t: t, b: b, f: f, bob: b.Register("bob", "password1234")}
	x.bobKey = txServerKey(b).User("bob")
	x.carol = f.key.User("carol")
	x.room = x.newRoom(version)
	return x
}

// newRoom makes a room of carol's that bob joined: B stores the room's
// state as outliers and bob's join at that state, as after a join over
// federation.
func (x *txFixture) newRoom(version string) *testroom.Room {
	x.t.Helper()
	room := testroom.New(x.t, version, x.carol)
	x.f.rooms = append(x.f.rooms, room)
	state := room.State().Events()
	room.Join(x.bobKey)
	ctx := context.Background()
	rs := x.b.Server.Roomserver
	if err := rs.InputOutliers(ctx, state); err != nil {
		x.t.Fatal(err)
	}
	if res, err := rs.InputEventWithState(ctx, room.Last(), state); err != nil || res.Status != 0 {
		x.t.Fatalf("bob's join: %+v %v", res, err)
	}
	return room
}

// send sends PDUs in a transaction and returns the results by event ID.
func (x *txFixture) send(pdus ...gomatrixserverlib.PDU) gjson.Result {
	x.t.Helper()
	raws := make([]json.RawMessage, len(pdus))
	for i, p := range pdus {
		raws[i] = p.JSON()
	}
	return x.sendRaw(raws...)
}

func (x *txFixture) sendRaw(raws ...json.RawMessage) gjson.Result {
	x.t.Helper()
	x.txns++
	status, body := x.f.sendTxn(x.b, fmt.Sprintf("txn%d", x.txns), raws, nil)
	if status != 200 {
		x.t.Fatalf("transaction: %d %s", status, body.Raw)
	}
	return body.Get("pdus")
}

func (x *txFixture) sendEDUs(edus ...any) {
	x.t.Helper()
	x.txns++
	if status, body := x.f.sendTxn(x.b, fmt.Sprintf("txn%d", x.txns), nil, edus); status != 200 {
		x.t.Fatalf("transaction: %d %s", status, body.Raw)
	}
}

// accepted fails unless every event's result is {}.
func (x *txFixture) accepted(results gjson.Result, pdus ...gomatrixserverlib.PDU) {
	x.t.Helper()
	for _, p := range pdus {
		r := results.Get(gjson.Escape(p.EventID()))
		if !r.Exists() || r.Get("error").Exists() {
			x.t.Fatalf("%s: result %s, want {} (all: %s)", p.EventID(), r.Raw, results.Raw)
		}
	}
}

// refused fails unless the event's result is an error saying want.
func (x *txFixture) refused(results gjson.Result, eventID, want string) {
	x.t.Helper()
	msg := results.Get(gjson.Escape(eventID) + ".error").Str
	if !strings.Contains(msg, want) {
		x.t.Fatalf("%s: error %q, want one saying %q (all: %s)", eventID, msg, want, results.Raw)
	}
}

func (x *txFixture) stored(eventID string) bool {
	x.t.Helper()
	got, err := x.b.Server.Roomserver.StoredEvents(context.Background(), []string{eventID})
	if err != nil {
		x.t.Fatal(err)
	}
	return got[eventID] != nil
}

func TestInboundPDUChecks(t *testing.T) {
	for _, version := range []string{"10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			x := newTxFixture(t, version)
			room, carol := x.room, x.carol
			mallory := x.f.key.User("mallory")

			hello := room.Send(carol, "hello").Last()
			x.accepted(x.send(hello), hello)
			if got := txMessages(t, x.b, x.bob, &x.since, room.ID(), 1); !slices.Equal(got, []string{"hello"}) {
				t.Fatalf("bob got %v", got)
			}

			// Signed by a key that is not carol's server's.
			_, otherKey, _ := ed25519.GenerateKey(nil)
			forger := &testroom.Server{Name: x.f.name, KeyID: x.f.key.KeyID, PrivateKey: otherKey, PublicKey: otherKey.Public().(ed25519.PublicKey)}
			forged := room.Fork().Event(forger.User("carol"), "m.room.message", nil, map[string]string{"body": "forged"})
			// Not allowed by the auth rules: mallory never joined.
			intruder := room.Fork().Event(mallory, "m.room.message", nil, map[string]string{"body": "let me in"}, testroom.Rejected())
			// Sent by a user of another server (bob's own, signed by B):
			// only B may send it.
			relayed := room.Fork().Event(x.bobKey, "m.room.message", nil, map[string]string{"body": "not yours"})
			results := x.send(forged, intruder, relayed)
			x.refused(results, forged.EventID(), "Signature")
			x.refused(results, intruder.EventID(), "Rejected")
			x.refused(results, relayed.EventID(), "not a user of the origin")
			for _, ev := range []gomatrixserverlib.PDU{forged, relayed} {
				if x.stored(ev.EventID()) {
					t.Fatalf("%s was stored", ev.EventID())
				}
			}

			// Content that does not match its hash: the event is redacted
			// and goes on in that form.
			tampered := room.Send(carol, "original").Last()
			raw, _ := sjson.SetBytes(tampered.JSON(), "content.body", "tampered")
			x.accepted(x.sendRaw(raw), tampered)
			ev, err := x.b.Server.Roomserver.Event(context.Background(), tampered.EventID())
			if err != nil || gjson.GetBytes(ev.Content(), "body").Exists() {
				t.Fatalf("a tampered event is stored as %s, %v; want it redacted", ev.JSON(), err)
			}

			// An event of a room B is not in.
			other := testroom.New(t, version, carol).Send(carol, "elsewhere").Last()
			x.refused(x.send(other), other.EventID(), "not in room")

			// Not JSON of an event at all.
			garbage := json.RawMessage(`{"room_id":"` + room.ID() + `","event_id":"$garbage","type":7}`)
			x.refused(x.sendRaw(garbage), "$garbage", "Invalid event")
		})
	}
}

func TestInboundTransactionLimitsAndIdempotence(t *testing.T) {
	x := newTxFixture(t, "10")
	first := x.room.Send(x.carol, "first").Last()
	status, body := x.f.sendTxn(x.b, "repeat-me", []json.RawMessage{first.JSON()}, nil)
	if status != 200 {
		t.Fatalf("%d %s", status, body.Raw)
	}
	// The same transaction ID again, even with other contents, gets the
	// same answer and is not processed again.
	second := x.room.Send(x.carol, "second").Last()
	status, again := x.f.sendTxn(x.b, "repeat-me", []json.RawMessage{second.JSON()}, nil)
	if status != 200 || again.Raw != body.Raw {
		t.Fatalf("repeat: %d %s, want %s", status, again.Raw, body.Raw)
	}
	if x.stored(second.EventID()) {
		t.Fatal("a repeated transaction ID was processed again")
	}

	var many []json.RawMessage
	for i := range 51 {
		many = append(many, x.room.Fork().Event(x.carol, "m.room.message", nil, map[string]string{"body": fmt.Sprint(i)}).JSON())
	}
	if status, body := x.f.sendTxn(x.b, "too-many-pdus", many, nil); status != 400 || body.Get("errcode").Str != "M_BAD_JSON" {
		t.Fatalf("51 PDUs: %d %s", status, body.Raw)
	}
	var edus []any
	for range 101 {
		edus = append(edus, txEDU("m.typing", map[string]any{"room_id": x.room.ID(), "user_id": x.carol.ID(), "typing": true}))
	}
	if status, body := x.f.sendTxn(x.b, "too-many-edus", nil, edus); status != 400 || body.Get("errcode").Str != "M_BAD_JSON" {
		t.Fatalf("101 EDUs: %d %s", status, body.Raw)
	}
	if status, body := x.f.sendTxn(x.b, "not-a-list", nil, nil); status != 200 || body.Get("pdus").Raw != "{}" {
		t.Fatalf("an empty transaction: %d %s", status, body.Raw)
	}
	if status, body := x.f.signedRequest(x.b, "PUT", "/_matrix/federation/v1/send/bad-body", map[string]any{"pdus": "no"}); status != 400 {
		t.Fatalf("pdus not a list: %d %s", status, body.Raw)
	}
}

func TestInboundGapFilling(t *testing.T) {
	x := newTxFixture(t, "10")
	room, carol := x.room, x.carol

	// The events in between come from /get_missing_events.
	g1 := room.Send(carol, "g1").Last()
	room.Send(carol, "g2")
	g3 := room.Send(carol, "g3").Last()
	x.accepted(x.send(g3), g3)
	if got := txMessages(t, x.b, x.bob, &x.since, room.ID(), 3); !slices.Equal(got, []string{"g1", "g2", "g3"}) {
		t.Fatalf("bob got %v", got)
	}
	if x.f.count("get_missing_events") == 0 || !x.stored(g1.EventID()) {
		t.Fatal("the gap was not filled through /get_missing_events")
	}

	// When they do not come, the state before the event does
	// (/state_ids, then /event for what B lacks).
	x.f.mu.Lock()
	x.f.noMissingEvents = true
	x.f.mu.Unlock()
	room.Send(carol, "h1")
	room.SetState(carol, "m.room.topic", "", map[string]string{"topic": "learnt from the state"})
	h3 := room.Send(carol, "h3").Last()
	x.accepted(x.send(h3), h3)
	if got := txMessages(t, x.b, x.bob, &x.since, room.ID(), 1); !slices.Equal(got, []string{"h3"}) {
		t.Fatalf("bob got %v", got)
	}
	topic, err := x.b.Server.Roomserver.CurrentStateEvent(context.Background(), room.ID(), "m.room.topic", "")
	if err != nil || topic == nil || gjson.GetBytes(topic.Content(), "topic").Str != "learnt from the state" {
		t.Fatalf("topic after the state fetch: %v %v", topic, err)
	}
	if x.f.count("state_ids") == 0 || x.f.count("event") == 0 {
		t.Fatalf("calls: %v", x.f.calls)
	}

	// Auth events B lacks come from /event_auth: power levels set on a
	// branch B never saw, named by a message.
	branch := room.Fork()
	branch.SetPowerLevels(carol, room.PowerLevelsContent())
	newPL := branch.Last()
	auth := slices.DeleteFunc(slices.Clone(room.Send(carol, "probe").Last().AuthEventIDs()), func(id string) bool {
		return id == room.State().Get("m.room.power_levels", "").EventID()
	})
	x.accepted(x.send(room.Last()), room.Last())
	msg := room.Event(carol, "m.room.message", nil, map[string]string{"body": "cites unseen power levels"},
		testroom.WithAuthEvents(append(auth, newPL.EventID())...))
	x.accepted(x.send(msg), msg)
	if x.f.count("event_auth") == 0 || !x.stored(newPL.EventID()) {
		t.Fatal("missing auth events were not fetched")
	}
}

func TestInboundEDUs(t *testing.T) {
	x := newTxFixture(t, "10")
	room, carol := x.room, x.carol
	roomID := room.ID()
	eve := testroom.NewServer(t, "other.example").User("eve")

	// Typing: only the origin's users, only members.
	x.sendEDUs(
		txEDU("m.typing", map[string]any{"room_id": roomID, "user_id": eve.ID(), "typing": true}),
		txEDU("m.typing", map[string]any{"room_id": roomID, "user_id": x.f.key.User("mallory").ID(), "typing": true}),
		txEDU("m.typing", map[string]any{"room_id": roomID, "user_id": carol.ID(), "typing": true}),
	)
	txEphemeral(t, x.b, x.bob, &x.since, roomID, "m.typing", func(c gjson.Result) bool {
		users := c.Get("user_ids").Array()
		if len(users) > 1 {
			t.Fatalf("typing: %s", c.Raw)
		}
		return len(users) == 1 && users[0].Str == carol.ID()
	})

	// Receipts.
	hello := room.Send(carol, "hello").Last()
	x.accepted(x.send(hello), hello)
	x.sendEDUs(txEDU("m.receipt", map[string]any{roomID: map[string]any{"m.read": map[string]any{
		carol.ID(): map[string]any{"event_ids": []string{hello.EventID()}, "data": map[string]any{"ts": 1234}},
		eve.ID():   map[string]any{"event_ids": []string{hello.EventID()}, "data": map[string]any{"ts": 1234}},
	}}}))
	txEphemeral(t, x.b, x.bob, &x.since, roomID, "m.receipt", func(c gjson.Result) bool {
		if c.Get(gjson.Escape(hello.EventID()) + ".m\\.read." + gjson.Escape(eve.ID())).Exists() {
			t.Fatalf("a receipt of another server's user: %s", c.Raw)
		}
		return c.Get(gjson.Escape(hello.EventID())+".m\\.read."+gjson.Escape(carol.ID())+".ts").Int() == 1234
	})

	// Presence of a user bob shares a room with.
	x.sendEDUs(txEDU("m.presence", map[string]any{"push": []any{
		map[string]any{"user_id": carol.ID(), "presence": "online", "status_msg": "federating", "last_active_ago": 10, "currently_active": true},
		map[string]any{"user_id": eve.ID(), "presence": "online", "last_active_ago": 10},
	}}))
	txSyncUntil(t, x.b, x.bob, &x.since, "carol's presence", func(r gjson.Result) bool {
		for _, ev := range r.Get("presence.events").Array() {
			if ev.Get("sender").Str == eve.ID() {
				t.Fatalf("presence of another server's user: %s", ev.Raw)
			}
			if ev.Get("sender").Str == carol.ID() && ev.Get("content.status_msg").Str == "federating" {
				return true
			}
		}
		return false
	})

	// To-device: once per message ID.
	toDevice := func(messageID, text string) any {
		return txEDU("m.direct_to_device", map[string]any{
			"sender": carol.ID(), "type": "m.test", "message_id": messageID,
			"messages": map[string]any{x.bob.UserID: map[string]any{"*": map[string]string{"text": text}}},
		})
	}
	x.sendEDUs(toDevice("m1", "once"))
	x.sendEDUs(toDevice("m1", "once"), toDevice("m2", "twice"))
	var got []string
	txSyncUntil(t, x.b, x.bob, &x.since, "to-device messages", func(r gjson.Result) bool {
		for _, ev := range r.Get("to_device.events").Array() {
			if ev.Get("sender").Str != carol.ID() || ev.Get("type").Str != "m.test" {
				t.Fatalf("to-device: %s", ev.Raw)
			}
			got = append(got, ev.Get("content.text").Str)
		}
		return len(got) >= 2
	})
	time.Sleep(200 * time.Millisecond)
	txSyncUntil(t, x.b, x.bob, &x.since, "nothing more", func(r gjson.Result) bool {
		for _, ev := range r.Get("to_device.events").Array() {
			got = append(got, ev.Get("content.text").Str)
		}
		return true
	})
	if !slices.Equal(got, []string{"once", "twice"}) {
		t.Fatalf("to-device messages %v, want each once", got)
	}

	// Key updates are accepted (this test server has no key server wired).
	x.sendEDUs(txEDU("m.device_list_update", map[string]any{"user_id": carol.ID(), "device_id": "D", "stream_id": 1}),
		txEDU("m.signing_key_update", map[string]any{"user_id": carol.ID()}),
		txEDU("m.unknown", map[string]any{}), "not an object")
}

func TestInboundServerACL(t *testing.T) {
	x := newTxFixture(t, "10")
	room, carol := x.room, x.carol
	// The ACL event itself comes while the origin is still allowed.
	acl := room.SetState(carol, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"localhost"}}).Last()
	x.accepted(x.send(acl), acl)
	after := room.Send(carol, "after the ACL").Last()
	x.refused(x.send(after), after.EventID(), "server ACL")
	if x.stored(after.EventID()) {
		t.Fatal("an event of a denied server was stored")
	}
	// Its typing notifications are ignored; nothing reaches bob.
	x.sendEDUs(txEDU("m.typing", map[string]any{"room_id": room.ID(), "user_id": carol.ID(), "typing": true}))
	r := txSyncUntil(t, x.b, x.bob, &x.since, "a sync", func(gjson.Result) bool { return true })
	time.Sleep(300 * time.Millisecond)
	r = txSyncUntil(t, x.b, x.bob, &x.since, "a sync", func(gjson.Result) bool { return true })
	if strings.Contains(r.Raw, "m.typing") && strings.Contains(r.Get("rooms.join."+gjson.Escape(room.ID())+".ephemeral").Raw, carol.ID()) {
		t.Fatalf("typing from a denied server reached bob: %s", r.Raw)
	}
}
