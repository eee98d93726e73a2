package federationapi_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/testroom"
)

// An event refused at its auth events is stored as rejected, so that the
// origin's next event, which cites it as a prev event, is taken without
// a gap to fill (the spec accepts events citing rejected events if they
// pass the auth rules themselves).
func TestInboundEventAfterRejectedEvent(t *testing.T) {
	x := newTxFixture(t, "10")
	room, carol := x.room, x.carol
	mallory := x.f.key.User("mallory")

	intruder := room.Event(mallory, "m.room.message", nil, map[string]string{"body": "let me in"}, testroom.Rejected())
	x.refused(x.send(intruder), intruder.EventID(), "Rejected")
	after := room.Send(carol, "after the intruder").Last()
	if !slices.Equal(after.PrevEventIDs(), []string{intruder.EventID()}) {
		t.Fatalf("prev events %v, want the intruder's", after.PrevEventIDs())
	}
	x.accepted(x.send(after), after)
	if got := txMessages(t, x.b, x.bob, &x.since, room.ID(), 1); !slices.Equal(got, []string{"after the intruder"}) {
		t.Fatalf("bob got %v", got)
	}
	if n := x.f.count("get_missing_events") + x.f.count("state_ids"); n != 0 {
		t.Fatalf("the rejected prev event was fetched again: %v", x.f.calls)
	}
	if ev, err := x.b.Server.Roomserver.Event(context.Background(), intruder.EventID()); err == nil {
		t.Fatalf("the rejected event is served: %s", ev.JSON())
	}
}

// A gap wider than /get_missing_events gives: its oldest event is placed
// at the state after its prev event (/state_ids at that prev event), and
// auth events named by the event we were sent that only the gap holds
// come with it, not from /event_auth.
func TestInboundGapEdgeAtFetchedState(t *testing.T) {
	x := newTxFixture(t, "10")
	room, carol := x.room, x.carol

	pl := room.PowerLevelsContent()
	pl["events_default"] = 10
	pl["users"].(map[string]any)[carol.ID()] = 100
	newPL := room.SetPowerLevels(carol, pl).Last()
	for i := range 25 {
		room.Send(carol, fmt.Sprint("m", i))
	}
	last := room.Send(carol, "last").Last()
	if !slices.Contains(last.AuthEventIDs(), newPL.EventID()) {
		t.Fatal("the last message does not cite the new power levels")
	}
	x.accepted(x.send(last), last)
	if x.f.count("event_auth") != 0 {
		t.Fatalf("auth events were fetched before the gap was filled: %v", x.f.calls)
	}
	if x.f.count("get_missing_events") == 0 || x.f.count("state_ids") == 0 {
		t.Fatalf("calls: %v", x.f.calls)
	}
	got, err := x.b.Server.Roomserver.CurrentStateEvent(context.Background(), room.ID(), "m.room.power_levels", "")
	if err != nil || got == nil || got.EventID() != newPL.EventID() {
		t.Fatalf("power levels after the gap: %v %v, want %s", got, err, newPL.EventID())
	}
	txSyncUntil(t, x.b, x.bob, &x.since, "the last message", func(r gjson.Result) bool {
		evs := r.Get("rooms.join." + gjson.Escape(room.ID()) + ".timeline.events").Array()
		return len(evs) > 0 && evs[len(evs)-1].Get("content.body").Str == "last"
	})
}

// An event of an older room version whose state key is over 255 bytes but
// not 255 code points (which those versions counted) is kept when a gap
// brings it, as the servers that made it did.
func TestInboundGapWithLongStateKeyInOldRoomVersion(t *testing.T) {
	x := newTxFixture(t, "10")
	room, carol := x.room, x.carol
	breaker := room.SetState(carol, "my.room.breaker", strings.Repeat("💥", 70), map[string]any{}, testroom.Lenient()).Last()
	after := room.Send(carol, "after the breaker").Last()
	x.accepted(x.send(after), after)
	if !x.stored(breaker.EventID()) {
		t.Fatal("the event with the long state key was not stored")
	}
	if x.f.count("state_ids") != 0 {
		t.Fatalf("the gap was not filled by /get_missing_events: %v", x.f.calls)
	}
}
