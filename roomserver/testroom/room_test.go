package testroom_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/roomserver/testroom"
)

func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// allVersions are the stable room versions, 1 to 12.
var allVersions = func() []string {
	var vs []string
	for i := 1; i <= 12; i++ {
		vs = append(vs, fmt.Sprint(i))
	}
	return vs
}()

// busyRoom builds a room that uses every builder method, across two
// servers, with a fork and a merge.
func busyRoom(t *testing.T, version string) (*testroom.Room, []*testroom.Server) {
	a, b := testroom.NewServer(t, "a.test"), testroom.NewServer(t, "b.test")
	alice, bob, carol, dan := a.User("alice"), a.User("bob"), b.User("carol"), b.User("dan")
	room := testroom.New(t, version, alice).
		Join(bob).
		Send(alice, "hi").
		SetState(alice, spec.MRoomTopic, "", map[string]any{"topic": "testing"}).
		SetUserLevel(alice, bob, 50).
		Invite(bob, carol). // carol's server co-signs
		Join(carol).
		Join(dan).
		Kick(bob, dan).
		Ban(alice, dan).
		Send(carol, "hello")
	left := room.Fork().Send(alice, "left").SetState(alice, spec.MRoomName, "", map[string]any{"name": "L"})
	right := room.Fork().Send(carol, "right").Leave(carol)
	left.Merge(right).Send(bob, "merged")
	return left, []*testroom.Server{a, b}
}

func TestEventsAreValid(t *testing.T) {
	ctx := context.Background()
	for _, v := range allVersions {
		t.Run("v"+v, func(t *testing.T) {
			room, servers := busyRoom(t, v)
			verImpl := gomatrixserverlib.MustGetRoomVersion(room.Version())
			verifier := testroom.NewVerifier(servers...)
			for i, ev := range room.Events() {
				id := ev.EventID()

				// The JSON parses as an untrusted event of the room
				// version: same event ID (for v3+ the reference hash),
				// content hash intact (or it would come back redacted).
				parsed, err := verImpl.NewEventFromUntrustedJSON(ev.JSON())
				if err != nil {
					t.Fatalf("event %d (%s): untrusted parse: %v", i, ev.Type(), err)
				}
				if parsed.EventID() != id {
					t.Errorf("event %d: event ID %s, but its JSON hashes to %s", i, id, parsed.EventID())
				}
				if parsed.Redacted() {
					t.Errorf("event %d (%s): content hash does not match", i, id)
				}
				if err := gomatrixserverlib.VerifyEventSignatures(ctx, parsed, verifier, userIDForSender); err != nil {
					t.Errorf("event %d (%s): signatures: %v", i, id, err)
				}

				// Allowed by the auth rules at the builder's state before it,
				// and also by just the auth events it cites.
				before := room.StateBefore(id)
				provider, _ := gomatrixserverlib.NewAuthEvents(before.Events())
				if err := gomatrixserverlib.Allowed(parsed, provider, userIDForSender); err != nil {
					t.Errorf("event %d (%s %s): not allowed at the state before it: %v", i, ev.Type(), id, err)
				}
				var cited []gomatrixserverlib.PDU
				for _, a := range parsed.AuthEventIDs() { // v12: includes the create event implicitly
					cited = append(cited, room.EventByID(a))
					if before.Get(room.EventByID(a).Type(), *room.EventByID(a).StateKey()).EventID() != a {
						t.Errorf("event %d: auth event %s is not in the state before it", i, a)
					}
				}
				citedProvider, _ := gomatrixserverlib.NewAuthEvents(cited)
				if err := gomatrixserverlib.Allowed(parsed, citedProvider, userIDForSender); err != nil {
					t.Errorf("event %d (%s): not allowed by its own auth events: %v", i, id, err)
				}

				// prev_events and depth.
				if i == 0 {
					if len(ev.PrevEventIDs()) != 0 || ev.Depth() != 1 {
						t.Errorf("create event: prev_events %v depth %d", ev.PrevEventIDs(), ev.Depth())
					}
					continue
				}
				var maxDepth int64
				for _, p := range ev.PrevEventIDs() {
					maxDepth = max(maxDepth, room.EventByID(p).Depth())
				}
				if len(ev.PrevEventIDs()) == 0 || ev.Depth() != maxDepth+1 {
					t.Errorf("event %d: prev_events %v, depth %d, want %d", i, ev.PrevEventIDs(), ev.Depth(), maxDepth+1)
				}
			}
		})
	}
}

func TestSignaturesAndHashesHaveTeeth(t *testing.T) {
	ctx := context.Background()
	for _, v := range []string{"1", "3", "10", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			a := testroom.NewServer(t, "a.test")
			room := testroom.New(t, v, a.User("alice")).Send(a.User("alice"), "original")
			ev := room.Last()
			verImpl := gomatrixserverlib.MustGetRoomVersion(room.Version())

			// Changed content: the content hash no longer matches, so the
			// event comes back redacted.
			tampered, _ := sjson.SetBytes(ev.JSON(), "content.body", "forged")
			parsed, err := verImpl.NewEventFromUntrustedJSON(tampered)
			if err != nil {
				t.Fatal(err)
			}
			if !parsed.Redacted() {
				t.Error("changed content went unnoticed")
			}

			// Another server's key does not verify the signature.
			liar := testroom.NewVerifier(&testroom.Server{Name: a.Name, KeyID: a.KeyID, PublicKey: testroom.NewServer(t, "b.test").PublicKey})
			good, _ := verImpl.NewEventFromUntrustedJSON(ev.JSON())
			if err := gomatrixserverlib.VerifyEventSignatures(ctx, good, liar, userIDForSender); err == nil {
				t.Error("a signature verified with the wrong key")
			}
		})
	}
}

func TestInitialState(t *testing.T) {
	for _, v := range allVersions {
		t.Run("v"+v, func(t *testing.T) {
			a := testroom.NewServer(t, "a.test")
			alice := a.User("alice")
			room := testroom.New(t, v, alice)
			verImpl := gomatrixserverlib.MustGetRoomVersion(room.Version())
			state := room.State()
			want := []string{spec.MRoomCreate, spec.MRoomHistoryVisibility, spec.MRoomJoinRules, spec.MRoomMember, spec.MRoomPowerLevels}
			var got []string
			for _, ev := range state.Events() {
				got = append(got, ev.Type())
			}
			if !slices.Equal(got, want) {
				t.Fatalf("initial state types %v, want %v", got, want)
			}
			if jr, _ := state.Get(spec.MRoomJoinRules, "").JoinRule(); jr != spec.Public {
				t.Errorf("join rule %q", jr)
			}
			create := room.Events()[0]
			if create.Type() != spec.MRoomCreate {
				t.Fatalf("first event is %s", create.Type())
			}
			var raw struct {
				RoomID *string `json:"room_id"`
			}
			_ = json.Unmarshal(create.JSON(), &raw)
			pl, _ := state.Get(spec.MRoomPowerLevels, "").PowerLevels()
			_, creatorListed := pl.Users[alice.ID()]

			if verImpl.DomainlessRoomIDs() {
				if room.ID() != "!"+strings.TrimPrefix(create.EventID(), "$") {
					t.Errorf("room ID %s is not the create event's hash (%s)", room.ID(), create.EventID())
				}
				if raw.RoomID != nil {
					t.Errorf("create event has room_id %q", *raw.RoomID)
				}
				if creatorListed {
					t.Error("the creator is listed in power levels of a room where creators have unlimited power")
				}
				for _, ev := range room.Events()[1:] {
					var authEvents []string
					_ = json.Unmarshal([]byte(gjsonGet(ev.JSON(), "auth_events")), &authEvents)
					if slices.Contains(authEvents, create.EventID()) {
						t.Errorf("%s lists the create event in auth_events", ev.Type())
					}
				}
			} else {
				if raw.RoomID == nil || *raw.RoomID != room.ID() || !strings.HasSuffix(room.ID(), ":a.test") {
					t.Errorf("create event room_id %v, room ID %s", raw.RoomID, room.ID())
				}
				if pl.Users[alice.ID()] != 100 {
					t.Errorf("creator level %d", pl.Users[alice.ID()])
				}
				for _, ev := range room.Events()[1:] {
					if !slices.Contains(ev.AuthEventIDs(), create.EventID()) {
						t.Errorf("%s does not cite the create event", ev.Type())
					}
				}
			}
		})
	}
}

func gjsonGet(js []byte, key string) string {
	var m map[string]json.RawMessage
	_ = json.Unmarshal(js, &m)
	return string(m[key])
}

func TestOptions(t *testing.T) {
	a := testroom.NewServer(t, "a.test")
	alice, bob, carol := a.User("alice"), a.User("bob"), a.User("carol")

	room := testroom.New(t, "12", alice, testroom.JoinRule(spec.Invite), testroom.AdditionalCreators(bob))
	if jr, _ := room.State().Get(spec.MRoomJoinRules, "").JoinRule(); jr != spec.Invite {
		t.Errorf("join rule %q", jr)
	}
	// carol may not join an invite-only room uninvited.
	room.Join(carol, testroom.Rejected())
	if !room.IsRejected(room.Last().EventID()) || room.State().Get(spec.MRoomMember, carol.ID()) != nil {
		t.Error("a rejected join changed the state")
	}
	// The additional creator needs no power levels entry to set power levels.
	room.Invite(alice, bob).Join(bob).SetUserLevel(bob, carol, 10)
	// Nobody may list a creator in the power levels of a v12 room.
	room.SetUserLevel(alice, bob, 100, testroom.Rejected())

	// Timestamps tick one second per event unless set.
	r2 := testroom.New(t, "10", alice)
	evs := r2.Events()
	for i := 1; i < len(evs); i++ {
		if evs[i].OriginServerTS() != evs[i-1].OriginServerTS()+1000 {
			t.Errorf("timestamps %d then %d", evs[i-1].OriginServerTS(), evs[i].OriginServerTS())
		}
	}
	ts := testroom.StartTime.Add(42 * 3600e9)
	r2.Send(alice, "late", testroom.WithTimestamp(ts))
	if r2.Last().OriginServerTS() != spec.AsTimestamp(ts) {
		t.Errorf("WithTimestamp: got %d", r2.Last().OriginServerTS())
	}
}

func TestForks(t *testing.T) {
	a := testroom.NewServer(t, "a.test")
	alice, bob := a.User("alice"), a.User("bob")
	base := testroom.New(t, "11", alice).Join(bob)
	forkPoint := base.Last()

	left := base.Fork().SetState(alice, spec.MRoomTopic, "", map[string]any{"topic": "left"})
	right := base.Fork().SetState(alice, spec.MRoomTopic, "", map[string]any{"topic": "right"})
	rightFirst := right.Last()
	right.Send(bob, "x")
	if base.Last() != forkPoint {
		t.Error("building on a fork moved the original handle")
	}
	for _, first := range []gomatrixserverlib.PDU{left.Last(), rightFirst} {
		if !slices.Equal(first.PrevEventIDs(), []string{forkPoint.EventID()}) {
			t.Errorf("branch starts with prev_events %v", first.PrevEventIDs())
		}
	}
	if got := left.State().Get(spec.MRoomTopic, "").EventID(); got == right.State().Get(spec.MRoomTopic, "").EventID() {
		t.Error("branches share a topic")
	}
	if ext := base.ForwardExtremities(); len(ext) != 2 || !slices.Contains(ext, left.Last().EventID()) || !slices.Contains(ext, right.Last().EventID()) {
		t.Errorf("forward extremities %v", ext)
	}

	// A merge cites both heads, is one deeper than the deeper one, and
	// without a resolver sees the union with the receiver's side first.
	merged := left.Fork().Merge(right).Send(alice, "merge").Last()
	if !slices.Equal(merged.PrevEventIDs(), []string{left.Last().EventID(), right.Last().EventID()}) {
		t.Errorf("merge prev_events %v", merged.PrevEventIDs())
	}
	if merged.Depth() != right.Last().Depth()+1 {
		t.Errorf("merge depth %d, want %d", merged.Depth(), right.Last().Depth()+1)
	}
	if got := base.StateBefore(merged.EventID()).Get(spec.MRoomTopic, ""); got.EventID() != left.State().Get(spec.MRoomTopic, "").EventID() {
		t.Errorf("merge saw topic %s", got.Content())
	}

	// At and WithPrevEvents build on any event.
	at := base.At(forkPoint.EventID()).Send(bob, "again").Last()
	if !slices.Equal(at.PrevEventIDs(), []string{forkPoint.EventID()}) {
		t.Errorf("At: prev_events %v", at.PrevEventIDs())
	}
	wp := base.Fork().Send(bob, "wp", testroom.WithPrevEvents(left.Last().EventID(), right.Last().EventID())).Last()
	if len(wp.PrevEventIDs()) != 2 {
		t.Errorf("WithPrevEvents: prev_events %v", wp.PrevEventIDs())
	}

	// A resolver, if given, decides the state at a merge.
	called := false
	resolver := func(_ context.Context, _ gomatrixserverlib.RoomVersion, sets [][]gomatrixserverlib.PDU,
		_ func(context.Context, []string) ([]gomatrixserverlib.PDU, error), _ func(string) bool,
	) ([]gomatrixserverlib.PDU, error) {
		called = true
		return sets[len(sets)-1], nil
	}
	r := testroom.New(t, "11", alice, testroom.WithResolver(resolver)).Join(bob)
	l := r.Fork().SetState(alice, spec.MRoomTopic, "", map[string]any{"topic": "l"})
	rr := r.Fork().SetState(alice, spec.MRoomTopic, "", map[string]any{"topic": "r"})
	l.Merge(rr)
	if !called || l.State().Get(spec.MRoomTopic, "").EventID() != rr.Last().EventID() {
		t.Error("resolver not used at a merge")
	}
}

func TestAuthChain(t *testing.T) {
	for _, v := range []string{"1", "11", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			a := testroom.NewServer(t, "a.test")
			alice, bob := a.User("alice"), a.User("bob")
			room := testroom.New(t, v, alice).Join(bob).Send(bob, "hi")
			msg := room.Last()
			chain, err := room.AuthChain(context.Background(), []string{msg.EventID()})
			if err != nil {
				t.Fatal(err)
			}
			// bob's message: create, power levels, bob's join; bob's join:
			// join rules and alice's join; alice's join: nothing more.
			var types []string
			for _, ev := range chain {
				types = append(types, ev.Type()+" "+*ev.StateKey())
			}
			want := []string{
				"m.room.create ",
				"m.room.member " + alice.ID(),
				"m.room.power_levels ",
				"m.room.join_rules ",
				"m.room.member " + bob.ID(),
			}
			if !slices.Equal(types, want) {
				t.Errorf("auth chain\n got %q\nwant %q", types, want)
			}
			if _, err := room.AuthChain(context.Background(), []string{"$nope"}); err == nil {
				t.Error("no error for an unknown event")
			}
		})
	}
}

// The same steps build the same events (from v3 on, the same event IDs) in
// every test and run, but two rooms of one test are different rooms.
func TestReproducible(t *testing.T) {
	var ids [2]string
	for i := range ids {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			a := testroom.NewServer(t, "a.test")
			room := testroom.New(t, "12", a.User("alice")).Send(a.User("alice"), "x")
			ids[i] = room.Last().EventID()
			if again := testroom.New(t, "12", a.User("alice")); again.ID() == room.ID() {
				t.Error("two rooms of one test have the same ID")
			}
		})
	}
	if ids[0] != ids[1] {
		t.Errorf("same steps, different events: %s and %s", ids[0], ids[1])
	}
}
