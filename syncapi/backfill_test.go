package syncapi_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// backfillRoom creates a room on s with the given history visibility and
// sends n messages; it returns the room and the messages, oldest first.
func backfillRoom(t *testing.T, s *testserver.Server, creator, visibility string, n int) (string, []gomatrixserverlib.PDU) {
	t.Helper()
	ctx := context.Background()
	roomID, err := s.Server.Roomserver.CreateRoom(ctx, rsapi.CreateRoomRequest{
		Version: "12", Creator: creator,
		InitialState: []rsapi.StateEvent{
			{Type: "m.room.member", StateKey: creator, Content: map[string]any{"membership": "join"}},
			{Type: "m.room.power_levels", Content: map[string]any{"users": map[string]int{}, "events_default": 0, "state_default": 50}},
			{Type: "m.room.join_rules", Content: map[string]any{"join_rule": "public"}},
			{Type: "m.room.history_visibility", Content: map[string]any{"history_visibility": visibility}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []gomatrixserverlib.PDU
	for i := 0; i < n; i++ {
		raw, _ := json.Marshal(map[string]any{"msgtype": "m.text", "body": "m" + strconv.Itoa(i)})
		ev, err := s.Server.Roomserver.SendEvent(ctx, rsapi.NewEvent{RoomID: roomID, Sender: creator, Type: "m.room.message", Content: raw})
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, ev)
	}
	return roomID, msgs
}

// joinThroughStoredState makes userID, a user of b, join a's room after
// prev, leaving both servers where a join over federation would: b signs
// the join, a takes it as a remote event, and b stores the state before
// it (with its auth chain) as outliers and the join at that state. The
// history before the join stays on a.
func joinThroughStoredState(t *testing.T, a, b *testserver.Server, roomID, userID string, prev gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	t.Helper()
	ctx := context.Background()
	ars, brs := a.Server.Roomserver, b.Server.Roomserver
	version, err := ars.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(version)
	proto := gomatrixserverlib.ProtoEvent{
		SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID,
		Content: spec.RawJSON(`{"membership":"join"}`), PrevEvents: []string{prev.EventID()}, Depth: prev.Depth() + 1,
	}
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(&proto)
	if err != nil {
		t.Fatal(err)
	}
	var authIDs []string
	for _, tuple := range needed.Tuples() {
		ev, err := ars.CurrentStateEvent(ctx, roomID, tuple.EventType, tuple.StateKey)
		if err != nil {
			t.Fatal(err)
		}
		if ev != nil && !(ev.Type() == spec.MRoomCreate && verImpl.DomainlessRoomIDs()) {
			authIDs = append(authIDs, ev.EventID())
		}
	}
	proto.AuthEvents = authIDs
	join, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), spec.ServerName(b.ServerName()),
		gomatrixserverlib.KeyID(b.Server.Key.ID), b.Server.Key.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := ars.InputRemoteEvent(ctx, join); err != nil || res.Status != rsapi.InputAccepted {
		t.Fatalf("a takes the join: %+v %v", res, err)
	}
	stateEvents, chain, err := ars.StateBeforeEventWithAuthChain(ctx, roomID, join.EventID())
	if err != nil {
		t.Fatal(err)
	}
	if err := brs.InputOutliers(ctx, append(slices.Clone(stateEvents), chain...)); err != nil {
		t.Fatal(err)
	}
	if res, err := brs.InputEventWithState(ctx, join, stateEvents); err != nil || res.Status != rsapi.InputAccepted {
		t.Fatalf("b takes the join: %+v %v", res, err)
	}
	return join
}

// pageBack pages a room backwards from the newest event to the start and
// returns every event ID, and the end token of the first page.
func pageBack(t *testing.T, s *testserver.Server, u *testserver.User, roomID string, limit int) ([]string, string) {
	t.Helper()
	base := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/messages?dir=b&limit=" + strconv.Itoa(limit)
	var ids []string
	firstEnd, from := "", ""
	for page := 0; page < 50; page++ {
		r := s.MustOK("GET", base+from, u.AccessToken, nil)
		for _, ev := range r.Get("chunk").Array() {
			ids = append(ids, ev.Get("event_id").String())
		}
		end := r.Get("end").String()
		if page == 0 {
			firstEnd = end
		}
		if end == "" {
			return ids, firstEnd
		}
		from = "&from=" + url.QueryEscape(end)
	}
	t.Fatal("paging never ended")
	return nil, ""
}

func TestMessagesBackfillFromAnotherServer(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "pw")
	bob, carol := b.Register("bob", "pw"), b.Register("carol", "pw")

	// 60 messages on a: more than one /backfill answer (50 events) holds.
	roomID, msgs := backfillRoom(t, a, alice.UserID, "shared", 60)
	join := joinThroughStoredState(t, a, b, roomID, bob.UserID, msgs[len(msgs)-1])
	syncUntil(t, b, bob, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + join.EventID() + ")").Exists()
	})

	// Paging back from the join goes on into a's history: every message,
	// newest first, then the room's first events down to its creation.
	ids, firstEnd := pageBack(t, b, bob, roomID, 10)
	want := []string{join.EventID()}
	for i := len(msgs) - 1; i >= 0; i-- {
		want = append(want, msgs[i].EventID())
	}
	if len(ids) != len(want)+5 || !slices.Equal(ids[:len(want)], want) {
		t.Fatalf("paged %d events %v\nwant %v and the 5 initial events", len(ids), ids, want)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("%s served twice", id)
		}
		seen[id] = true
	}
	base := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/messages"
	all := b.MustOK("GET", base+"?dir=b&limit=100", bob.AccessToken, nil)
	if all.Get("chunk.#").Int() != int64(len(ids)) || all.Get("end").Exists() || all.Get("chunk.#(type==m.room.create)").Get("room_id").String() != roomID {
		t.Fatalf("one big page: %d events, %s", all.Get("chunk.#").Int(), all.Get("end").Raw)
	}
	if body := all.Get("chunk.#(event_id==" + msgs[0].EventID() + ").content.body").String(); body != "m0" {
		t.Fatalf("the oldest message reads %q", body)
	}

	// Forwards from inside the fetched history: on towards the join, and
	// from the end of the fetched history into the stream.
	fwd := b.MustOK("GET", base+"?dir=f&limit=3&from="+url.QueryEscape(firstEnd), bob.AccessToken, nil)
	if got := []string{fwd.Get("chunk.0.event_id").String(), fwd.Get("chunk.1.event_id").String(), fwd.Get("chunk.2.event_id").String()}; !slices.Equal(got, []string{msgs[51].EventID(), msgs[52].EventID(), msgs[53].EventID()}) {
		t.Fatalf("forwards from the first page's end: %s", fwd)
	}
	rest := b.MustOK("GET", base+"?dir=f&limit=50&from="+url.QueryEscape(fwd.Get("end").String()), bob.AccessToken, nil)
	if rest.Get("chunk.#").Int() != 6 || rest.Get("chunk.5.event_id").String() != msgs[59].EventID() {
		t.Fatalf("forwards to the end of the fetched history: %s", rest)
	}
	stream := b.MustOK("GET", base+"?dir=f&limit=50&from="+url.QueryEscape(rest.Get("end").String()), bob.AccessToken, nil)
	if stream.Get("chunk.0.event_id").String() != join.EventID() {
		t.Fatalf("forwards into the stream: %s", stream)
	}
	// A to token inside the fetched history stops a backwards page there.
	stop := b.MustOK("GET", base+"?dir=b&limit=50&to="+url.QueryEscape(firstEnd), bob.AccessToken, nil)
	if stop.Get("chunk.#").Int() != 10 || stop.Get("end").Exists() {
		t.Fatalf("backwards to the first page's end: %s", stop)
	}

	// Someone who was never in the room sees nothing; bad tokens are refused.
	b.ExpectError(403, "M_FORBIDDEN", "GET", base+"?dir=b&from="+url.QueryEscape(firstEnd), carol.AccessToken, nil)
	b.ExpectError(400, "M_INVALID_PARAM", "GET", base+"?dir=b&from=b1", bob.AccessToken, nil)
	b.ExpectError(400, "M_INVALID_PARAM", "GET", base+"?dir=b&from="+url.QueryEscape(firstEnd)+"&to=nope", bob.AccessToken, nil)

	// A room whose history is for joined members only: bob sees his own
	// join and nothing from before it.
	private, pmsgs := backfillRoom(t, a, alice.UserID, "joined", 3)
	pjoin := joinThroughStoredState(t, a, b, private, bob.UserID, pmsgs[len(pmsgs)-1])
	syncUntil(t, b, bob, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(private) + ".timeline.events.#(event_id==" + pjoin.EventID() + ")").Exists()
	})
	if ids, _ := pageBack(t, b, bob, private, 10); !slices.Equal(ids, []string{pjoin.EventID()}) {
		t.Fatalf("joined-only history: %v", ids)
	}

	// A room created here has nothing to fetch: paging ends at its start.
	local, lmsgs := backfillRoom(t, b, bob.UserID, "shared", 2)
	syncUntil(t, b, bob, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(local) + ".timeline.events.#(event_id==" + lmsgs[1].EventID() + ")").Exists()
	})
	if ids, _ := pageBack(t, b, bob, local, 3); len(ids) != 7 {
		t.Fatalf("local room: %v", ids)
	}
}
