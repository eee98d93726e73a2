package syncapi

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/sjson"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// fakeBackfillRooms stands in for the roomserver: it stores outliers as
// the roomserver would, refusing a batch with unknown auth events.
type fakeBackfillRooms struct {
	mu     sync.Mutex
	stored map[string]*rsapi.Event
	hv     gomatrixserverlib.PDU
}

func (f *fakeBackfillRooms) Event(_ context.Context, id string) (*rsapi.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ev, ok := f.stored[id]; ok {
		return ev, nil
	}
	return nil, rsapi.ErrEventNotFound
}

func (f *fakeBackfillRooms) StateEventAt(_ context.Context, _ int64, eventType, _ string) (gomatrixserverlib.PDU, error) {
	if eventType == spec.MRoomHistoryVisibility {
		return f.hv, nil
	}
	return nil, nil
}

func (f *fakeBackfillRooms) InputOutliers(_ context.Context, pdus []gomatrixserverlib.PDU) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	batch := map[string]bool{}
	for _, p := range pdus {
		batch[p.EventID()] = true
	}
	for _, p := range pdus {
		for _, a := range p.AuthEventIDs() {
			if _, ok := f.stored[a]; !ok && !batch[a] {
				return errors.New("unknown auth event " + a)
			}
		}
	}
	for _, p := range pdus {
		if _, ok := f.stored[p.EventID()]; !ok {
			f.stored[p.EventID()] = &rsapi.Event{PDU: p}
		}
	}
	return nil
}

// fakeBackfillServer answers /backfill from a room's history, at most
// maxAnswer events at a time, and /event_auth from its auth chains.
type fakeBackfillServer struct {
	room      *testroom.Room
	history   []gomatrixserverlib.PDU // oldest first
	maxAnswer int
	fail      bool
	backfills int
	authCalls int
}

func (f *fakeBackfillServer) Backfill(_ context.Context, _, _ spec.ServerName, _ string, limit int, ids []string) (gomatrixserverlib.Transaction, error) {
	f.backfills++
	if f.fail {
		return gomatrixserverlib.Transaction{}, errors.New("unreachable")
	}
	deepest := -1
	for i, ev := range f.history {
		if slices.Contains(ids, ev.EventID()) {
			deepest = i
		}
	}
	var txn gomatrixserverlib.Transaction
	for i := deepest; i >= 0 && len(txn.PDUs) < min(limit, f.maxAnswer); i-- {
		txn.PDUs = append(txn.PDUs, f.history[i].JSON())
	}
	return txn, nil
}

func (f *fakeBackfillServer) GetEventAuth(ctx context.Context, _, _ spec.ServerName, _ gomatrixserverlib.RoomVersion, _, eventID string) (fclient.RespEventAuth, error) {
	f.authCalls++
	chain, err := f.room.AuthChain(ctx, []string{eventID})
	if err != nil {
		return fclient.RespEventAuth{}, err
	}
	var resp fclient.RespEventAuth
	for _, ev := range chain {
		resp.AuthEvents = append(resp.AuthEvents, ev.JSON())
	}
	return resp, nil
}

func newTestBackfiller(t *testing.T, db *storage.DB, rooms BackfillRooms, fed BackfillFederation, keys gomatrixserverlib.JSONVerifier) *backfiller {
	t.Helper()
	ctx := context.Background()
	if err := db.Migrate(ctx, component, migrations); err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, backfillComponent, backfillMigrations); err != nil {
		t.Fatal(err)
	}
	return &backfiller{db: db, failedAt: map[string]time.Time{}, log: logrus.WithField("test", t.Name()),
		cfg: BackfillConfig{ServerName: "local.test", Rooms: rooms, Federation: fed, KeyRing: keys}}
}

func TestBackfillFetchesInRoundsAndCompletesAuthEvents(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		remote, local := testroom.NewServer(t, "remote.test"), testroom.NewServer(t, "local.test")
		carol, bob := remote.User("carol"), local.User("bob")
		room := testroom.New(t, "10", carol)
		for _, body := range []string{"x0", "x1", "x2", "x3", "x4"} {
			room.Send(carol, body)
		}
		room.SetUserLevel(carol, remote.User("dave"), 50) // a new power levels event
		for _, body := range []string{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"} {
			room.Send(carol, body)
		}
		history := room.Events()
		join := room.Join(bob).Last()

		// Here: the state before the join (as a join leaves it) and the
		// join, the one event of the room's stream.
		rooms := &fakeBackfillRooms{stored: map[string]*rsapi.Event{join.EventID(): {PDU: join, Position: 1}},
			hv: room.StateBefore(join.EventID()).Get(spec.MRoomHistoryVisibility, "")}
		for _, ev := range room.StateBefore(join.EventID()).Events() {
			rooms.stored[ev.EventID()] = &rsapi.Event{PDU: ev}
		}
		server := &fakeBackfillServer{room: room, history: history, maxAnswer: 6}
		b := newTestBackfiller(t, db, rooms, server, testroom.NewVerifier(remote, local))
		if _, err := db.Writer().ExecContext(ctx, sqlInsertEvent, join.EventID(), 1, room.ID(), join.Type(), bob.ID(), bob.ID(), "join",
			string(join.Version()), string(join.JSON()), "", "", "[]", "[]"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Writer().ExecContext(ctx, sqlUpsertState, room.ID(), spec.MRoomMember, carol.ID(), history[1].EventID(), "join", 1); err != nil {
			t.Fatal(err)
		}

		// Everything, newest first: four fetches of six, of which one page
		// makes at most three; the second page goes on.
		chunk, end, err := b.pageBackwards(ctx, room.ID(), bob.ID(), nil, backfillTop, 100, nil)
		if err != nil || end == "" || server.backfills != backfillFetchesPerPage {
			t.Fatalf("first page: %d events, end %q, %d backfills, %v", len(chunk), end, server.backfills, err)
		}
		from, _ := parseBackfillToken(end)
		more, end, err := b.pageBackwards(ctx, room.ID(), bob.ID(), nil, from, 100, nil)
		if err != nil {
			t.Fatal(err)
		}
		chunk = append(chunk, more...)
		want := slices.Clone(history)
		slices.Reverse(want)
		if !slices.Equal(eventIDsOf(chunk), eventIDsOf(want)) || end != "" {
			t.Fatalf("fetched history %v (end %q)\nwant %v", eventIDsOf(chunk), end, eventIDsOf(want))
		}
		// The fourth fetch; then no gap is left and no server is asked.
		if server.backfills != 4 || server.authCalls == 0 {
			t.Fatalf("%d backfills, %d event_auth calls", server.backfills, server.authCalls)
		}
		var gaps int
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM syncapi_backfill_gaps`).Scan(&gaps); err != nil || gaps != 0 {
			t.Fatalf("gaps left: %d %v", gaps, err)
		}

		// Paging in small steps goes through the stored history and back
		// up again, without fetching anything more.
		var paged []gomatrixserverlib.PDU
		pos := backfillTop
		for {
			chunk, end, err := b.pageBackwards(ctx, room.ID(), bob.ID(), nil, pos, 4, nil)
			if err != nil {
				t.Fatal(err)
			}
			paged = append(paged, chunk...)
			if end == "" {
				break
			}
			if pos, _ = parseBackfillToken(end); len(paged) > 100 {
				t.Fatal("paging does not end")
			}
		}
		if !slices.Equal(eventIDsOf(paged), eventIDsOf(want)) || server.backfills != 4 {
			t.Fatalf("paged %v after %d backfills", eventIDsOf(paged), server.backfills)
		}
		up, end, err := b.pageForwards(ctx, room.ID(), bob.ID(), nil, backfillBottom, 3, nil)
		if err != nil || !slices.Equal(eventIDsOf(up), eventIDsOf(history[:3])) || end == (Token{}).String() {
			t.Fatalf("forwards from the bottom: %v %q %v", eventIDsOf(up), end, err)
		}
		_, end, _ = b.pageForwards(ctx, room.ID(), bob.ID(), nil, backfillBottom, 100, nil)
		if end != (Token{}).String() {
			t.Fatalf("forwards past the top should continue into the stream: %q", end)
		}

		// A user who never joined sees none of it.
		if chunk, end, _ := b.pageBackwards(ctx, room.ID(), "@eve:local.test", nil, backfillTop, 10, nil); len(chunk) != 0 || end != "" {
			t.Fatalf("a stranger sees %v", eventIDsOf(chunk))
		}
	})
}

func TestBackfillServerFailures(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		remote, local := testroom.NewServer(t, "remote.test"), testroom.NewServer(t, "local.test")
		carol, bob := remote.User("carol"), local.User("bob")
		room := testroom.New(t, "12", carol).Send(carol, "hello")
		history := room.Events()
		join := room.Join(bob).Last()
		rooms := &fakeBackfillRooms{stored: map[string]*rsapi.Event{join.EventID(): {PDU: join, Position: 1}},
			hv: room.StateBefore(join.EventID()).Get(spec.MRoomHistoryVisibility, "")}
		for _, ev := range room.StateBefore(join.EventID()).Events() {
			rooms.stored[ev.EventID()] = &rsapi.Event{PDU: ev}
		}
		server := &fakeBackfillServer{room: room, history: history, maxAnswer: 50, fail: true}
		b := newTestBackfiller(t, db, rooms, server, testroom.NewVerifier(remote, local))
		if _, err := db.Writer().ExecContext(ctx, sqlInsertEvent, join.EventID(), 1, room.ID(), join.Type(), bob.ID(), bob.ID(), "join",
			string(join.Version()), string(join.JSON()), "", "", "[]", "[]"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Writer().ExecContext(ctx, sqlUpsertState, room.ID(), spec.MRoomMember, carol.ID(), history[1].EventID(), "join", 1); err != nil {
			t.Fatal(err)
		}

		// The server is down: nothing, no end, and no new attempt for a while.
		for i := 0; i < 2; i++ {
			if chunk, end, err := b.pageBackwards(ctx, room.ID(), bob.ID(), nil, backfillTop, 10, nil); err != nil || len(chunk) != 0 || end != "" {
				t.Fatalf("server down: %v %q %v", chunk, end, err)
			}
		}
		if server.backfills != 1 {
			t.Fatalf("%d attempts while down", server.backfills)
		}
		// Back up (and the wait is over): the history comes.
		server.fail = false
		b.failedAt = map[string]time.Time{}
		chunk, _, err := b.pageBackwards(ctx, room.ID(), bob.ID(), nil, backfillTop, 10, nil)
		if err != nil || len(chunk) != len(history) {
			t.Fatalf("server back: %v %v", eventIDsOf(chunk), err)
		}

		// Checks on what a server sends: a bad signature, another room's
		// event and repeats are dropped; a changed content arrives redacted.
		other := testroom.New(t, "12", carol).Last()
		msg := history[len(history)-1]
		badSig, _ := sjson.SetBytes(msg.JSON(), "signatures.remote\\.test.ed25519:test", "AAAA")
		changed, _ := sjson.SetBytes(msg.JSON(), "content.body", "not what was signed")
		got := b.checkEvents(ctx, room.ID(), room.Version(), []spec.RawJSON{badSig, other.JSON(), msg.JSON(), msg.JSON()}, 10)
		if len(got) != 1 || got[0].EventID() != msg.EventID() || got[0].Redacted() {
			t.Fatalf("checked: %v", eventIDsOf(got))
		}
		got = b.checkEvents(ctx, room.ID(), room.Version(), []spec.RawJSON{changed}, 10)
		if len(got) != 1 || !got[0].Redacted() {
			t.Fatalf("changed content: %v", got)
		}
	})
}

func eventIDsOf(evs []gomatrixserverlib.PDU) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID()
	}
	return out
}
