package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrix"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func TestRetryPolicyDelay(t *testing.T) {
	p := retryPolicy{min: 5 * time.Second, max: time.Hour}
	longest := func(int64) int64 { return 0 }
	shortest := func(k int64) int64 { return k - 1 }
	for _, tc := range []struct {
		n        int
		min, max time.Duration
	}{
		{1, 2500 * time.Millisecond, 5 * time.Second},
		{2, 5 * time.Second, 10 * time.Second},
		{3, 10 * time.Second, 20 * time.Second},
		{9, 640 * time.Second, 1280 * time.Second},
		{10, 1280 * time.Second, 2560 * time.Second},
		{11, 30 * time.Minute, time.Hour}, // 5s<<10 is past the cap
		{40, 30 * time.Minute, time.Hour},
		{1000, 30 * time.Minute, time.Hour},
	} {
		if got := p.delay(tc.n, longest); got != tc.max {
			t.Errorf("delay(%d) at most = %v, want %v", tc.n, got, tc.max)
		}
		if got := p.delay(tc.n, shortest); got != tc.min {
			t.Errorf("delay(%d) at least = %v, want %v", tc.n, got, tc.min)
		}
	}
}

func TestRefusedForGood(t *testing.T) {
	for code, want := range map[int]bool{400: true, 413: true, 401: false, 403: false, 404: false, 429: false, 500: false, 502: false} {
		err := fmt.Errorf("wrapped: %w", gomatrix.HTTPError{Code: code})
		if got := refusedForGood(err); got != want {
			t.Errorf("refusedForGood(%d) = %v, want %v", code, got, want)
		}
	}
	if refusedForGood(errors.New("connection refused")) {
		t.Error("a network error is not for good")
	}
}

// senderStream plays the roomserver for the sender: an output stream, the
// events of it, and the servers of each room.
type senderStream struct {
	mu      sync.Mutex
	out     []rsapi.OutputEvent
	events  map[string]gomatrixserverlib.PDU
	servers map[string][]string
	wake    chan struct{}
	// readUpTo is the furthest position the sender asked to read after:
	// it has handled everything up to there.
	readUpTo int64
}

func newSenderStream() *senderStream {
	return &senderStream{events: map[string]gomatrixserverlib.PDU{}, servers: map[string][]string{}, wake: make(chan struct{})}
}

func (f *senderStream) add(pdus ...gomatrixserverlib.PDU) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range pdus {
		f.events[p.EventID()] = p
		f.out = append(f.out, rsapi.OutputEvent{Position: int64(len(f.out) + 1), RoomID: p.RoomID().String(), Event: p})
	}
	close(f.wake)
	f.wake = make(chan struct{})
}

func (f *senderStream) OutputSince(_ context.Context, pos int64, limit int) ([]rsapi.OutputEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readUpTo = max(f.readUpTo, pos)
	if pos >= int64(len(f.out)) {
		return nil, nil
	}
	return slices.Clone(f.out[pos:min(int64(len(f.out)), pos+int64(limit))]), nil
}

func (f *senderStream) LatestPosition(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.out)), nil
}

func (f *senderStream) Notify(pos int64) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pos < int64(len(f.out)) {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return f.wake
}

func (f *senderStream) Event(_ context.Context, id string) (*rsapi.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.events[id]; ok {
		return &rsapi.Event{PDU: p}, nil
	}
	return nil, rsapi.ErrEventNotFound
}

func (f *senderStream) ResidentServers(_ context.Context, roomID string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.servers[roomID]; ok {
		return s, nil
	}
	return nil, rsapi.ErrRoomNotFound
}

func (f *senderStream) Memberships(_ context.Context, userID string) ([]rsapi.Membership, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []rsapi.Membership
	for roomID := range f.servers {
		out = append(out, rsapi.Membership{RoomID: roomID, UserID: userID, Membership: spec.Join})
	}
	return out, nil
}

func (f *senderStream) CurrentState(context.Context, string) ([]gomatrixserverlib.PDU, error) {
	return nil, nil
}

// senderRemote plays the destinations: it records every transaction tried
// and answers 200 unless told to fail.
type senderRemote struct {
	mu       sync.Mutex
	fail     error
	tried    []gomatrixserverlib.Transaction
	accepted []gomatrixserverlib.Transaction
	got      chan struct{}
}

func newSenderRemote() *senderRemote { return &senderRemote{got: make(chan struct{}, 1000)} }

func (r *senderRemote) SendTransaction(_ context.Context, t gomatrixserverlib.Transaction) (fclient.RespSend, error) {
	r.mu.Lock()
	defer func() {
		r.mu.Unlock()
		r.got <- struct{}{}
	}()
	r.tried = append(r.tried, t)
	if r.fail != nil {
		return fclient.RespSend{}, r.fail
	}
	r.accepted = append(r.accepted, t)
	return fclient.RespSend{PDUs: map[string]fclient.PDUResult{}}, nil
}

func (r *senderRemote) setFail(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

// acceptedPDUs are the event IDs the destination took, in order.
func (r *senderRemote) acceptedPDUs(dest spec.ServerName) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, t := range r.accepted {
		if t.Destination != dest {
			continue
		}
		for _, p := range t.PDUs {
			ids = append(ids, gjson.GetBytes(p, "content.body").String())
		}
	}
	return ids
}

func (r *senderRemote) acceptedEDUs(dest spec.ServerName) []gomatrixserverlib.EDU {
	r.mu.Lock()
	defer r.mu.Unlock()
	var edus []gomatrixserverlib.EDU
	for _, t := range r.accepted {
		if t.Destination == dest {
			edus = append(edus, t.EDUs...)
		}
	}
	return edus
}

// waitFor polls cond until it holds or a few seconds pass.
func senderWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type senderFixture struct {
	t      *testing.T
	db     *storage.DB
	stream *senderStream
	remote *senderRemote
	room   *testroom.Room
	alice  *testroom.User
	self   spec.ServerName
	sender *Sender
	stop   context.CancelFunc
}

// newSenderFixture has a room of local.test's alice that remote.test and
// other.test take part in.
func newSenderFixture(t *testing.T, db *storage.DB) *senderFixture {
	ctx := context.Background()
	if err := db.Migrate(ctx, component, migrations); err != nil {
		t.Fatal(err)
	}
	local := testroom.NewServer(t, "local.test")
	alice := local.User("alice")
	room := testroom.New(t, "10", alice)
	stream := newSenderStream()
	stream.servers[room.ID()] = []string{"local.test", "other.test", "remote.test"}
	f := &senderFixture{t: t, db: db, stream: stream, remote: newSenderRemote(), room: room, alice: alice, self: "local.test"}
	f.start()
	return f
}

// start starts a sender over the fixture's database, as a (re)started
// server would.
func (f *senderFixture) start() {
	f.t.Helper()
	s, err := newSender(context.Background(), f.self, f.remote, f.db, f.stream)
	if err != nil {
		f.t.Fatal(err)
	}
	s.policy = retryPolicy{min: 20 * time.Millisecond, max: 50 * time.Millisecond, dropAfter: time.Hour, timeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	s.Start(ctx)
	f.sender, f.stop = s, func() { cancel(); s.Wait() }
	f.t.Cleanup(f.stop)
}

func (f *senderFixture) send(bodies ...string) {
	for _, b := range bodies {
		f.room.Send(f.alice, b)
		f.stream.add(f.room.Last())
	}
}

func TestSenderDeliversInOrderAndRetries(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		f.remote.setFail(errors.New("connection refused"))
		f.send("one", "two")
		senderWait(t, "failed attempts", func() bool {
			f.remote.mu.Lock()
			defer f.remote.mu.Unlock()
			n := 0
			for _, tr := range f.remote.tried {
				if tr.Destination == "remote.test" {
					n++
				}
			}
			return n >= 2
		})
		f.remote.setFail(nil)
		f.send("three")
		for _, dest := range []spec.ServerName{"remote.test", "other.test"} {
			senderWait(t, "delivery to "+string(dest), func() bool { return len(f.remote.acceptedPDUs(dest)) == 3 })
			if got := f.remote.acceptedPDUs(dest); !slices.Equal(got, []string{"one", "two", "three"}) {
				t.Fatalf("%s got %v", dest, got)
			}
		}
		// A failed transaction is sent again as it was, under its ID.
		f.remote.mu.Lock()
		tries := map[gomatrixserverlib.TransactionID]int{}
		for _, tr := range f.remote.tried {
			if tr.Destination == "remote.test" {
				tries[tr.TransactionID]++
			}
		}
		var first gomatrixserverlib.Transaction
		for _, tr := range f.remote.accepted {
			if tr.Destination == "remote.test" {
				first = tr
				break
			}
		}
		f.remote.mu.Unlock()
		if tries[first.TransactionID] < 2 || gjson.GetBytes(first.PDUs[0], "content.body").Str != "one" {
			t.Fatalf("first transaction %s was tried %d times; want it retried", first.TransactionID, tries[first.TransactionID])
		}
		for _, tr := range f.remote.accepted {
			if tr.Origin != "local.test" || tr.TransactionID == "" {
				t.Fatalf("transaction %+v", tr)
			}
		}
	})
}

func TestSenderOnlySendsOurUsersEventsWithinLimits(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		// A remote user's event is not ours to send.
		carol := testroom.NewServer(t, "remote.test").User("carol")
		f.room.Join(carol)
		f.stream.add(f.room.Last())
		bodies := make([]string, 120)
		for i := range bodies {
			bodies[i] = fmt.Sprint(i)
		}
		f.send(bodies...)
		senderWait(t, "delivery", func() bool { return len(f.remote.acceptedPDUs("remote.test")) == 120 })
		if got := f.remote.acceptedPDUs("remote.test"); !slices.Equal(got, bodies) {
			t.Fatalf("got %v", got)
		}
		f.remote.mu.Lock()
		defer f.remote.mu.Unlock()
		for _, tr := range f.remote.accepted {
			if len(tr.PDUs) > maxTxnPDUs {
				t.Fatalf("a transaction of %d PDUs", len(tr.PDUs))
			}
		}
	})
}

func TestSenderResumesAfterRestartWithoutResending(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		f.send("acknowledged")
		senderWait(t, "first delivery", func() bool { return len(f.remote.acceptedPDUs("remote.test")) == 1 })
		f.remote.setFail(errors.New("connection refused"))
		f.send("queued one", "queued two")
		senderWait(t, "a failed attempt", func() bool {
			f.remote.mu.Lock()
			defer f.remote.mu.Unlock()
			return len(f.remote.tried) >= len(f.remote.accepted)+2
		})
		f.stop()
		f.remote.mu.Lock()
		inFlight := f.remote.tried[len(f.remote.tried)-1].TransactionID
		f.remote.mu.Unlock()

		// Restarted, it sends what was queued, the transaction in flight
		// under its ID, and nothing acknowledged before.
		f.remote.setFail(nil)
		f.start()
		f.send("after restart")
		for _, dest := range []spec.ServerName{"remote.test", "other.test"} {
			want := []string{"acknowledged", "queued one", "queued two", "after restart"}
			senderWait(t, "delivery to "+string(dest), func() bool { return len(f.remote.acceptedPDUs(dest)) >= len(want) })
			time.Sleep(50 * time.Millisecond)
			if got := f.remote.acceptedPDUs(dest); !slices.Equal(got, want) {
				t.Fatalf("%s got %v, want %v", dest, got, want)
			}
		}
		f.remote.mu.Lock()
		defer f.remote.mu.Unlock()
		found := false
		for _, tr := range f.remote.accepted {
			found = found || tr.TransactionID == inFlight
		}
		if !found {
			t.Fatalf("the transaction in flight (%s) was not resent under its ID", inFlight)
		}
	})
}

func TestSenderDropsWhatWaitedTooLong(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		f.sender.policy.dropAfter = 200 * time.Millisecond
		f.remote.setFail(errors.New("connection refused"))
		f.send("too old")
		time.Sleep(400 * time.Millisecond)
		f.remote.setFail(nil)
		f.send("fresh")
		senderWait(t, "delivery", func() bool { return len(f.remote.acceptedPDUs("remote.test")) >= 1 })
		time.Sleep(50 * time.Millisecond)
		if got := f.remote.acceptedPDUs("remote.test"); !slices.Equal(got, []string{"fresh"}) {
			t.Fatalf("got %v", got)
		}
	})
}

func TestSenderDropsTransactionsRefusedForGood(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		f.remote.setFail(gomatrix.HTTPError{Code: http.StatusBadRequest})
		f.send("refused")
		senderWait(t, "an attempt", func() bool { f.remote.mu.Lock(); defer f.remote.mu.Unlock(); return len(f.remote.tried) >= 2 })
		f.remote.setFail(nil)
		f.send("taken")
		senderWait(t, "delivery", func() bool { return len(f.remote.acceptedPDUs("remote.test")) >= 1 })
		time.Sleep(50 * time.Millisecond)
		if got := f.remote.acceptedPDUs("remote.test"); !slices.Equal(got, []string{"taken"}) {
			t.Fatalf("got %v", got)
		}
	})
}

func TestSenderEDUs(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		ctx := context.Background()
		roomID, alice := f.room.ID(), f.alice.ID()

		// Unsent EDUs with the same key replace each other.
		store := senderStore{db: db}
		for _, typing := range []string{"true", "false"} {
			if err := store.queueEDU(ctx, []spec.ServerName{"idle.test"}, queuedEDU{Type: "m.typing", Content: []byte(typing), CoalesceKey: "k"}); err != nil {
				t.Fatal(err)
			}
		}
		var n int
		var content string
		if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*), MAX(content) FROM federationapi_queue_edus WHERE destination = 'idle.test'`).Scan(&n, &content); err != nil || n != 1 || content != "false" {
			t.Fatalf("coalesced rows: %d %q %v", n, content, err)
		}

		// While remote.test is down, typing changes queue up.
		f.remote.setFail(errors.New("connection refused"))
		for _, typing := range []bool{true, false, true} {
			if err := f.sender.SendTyping(ctx, roomID, alice, typing); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.sender.SendReceipt(ctx, roomID, alice, "m.read", "", "$ev", 1234); err != nil {
			t.Fatal(err)
		}
		if err := f.sender.SendPresence(ctx, alice, "online", "hi", 10, true); err != nil {
			t.Fatal(err)
		}
		msgs := map[string]map[string]json.RawMessage{
			"@bob:remote.test": {"DEV": json.RawMessage(`{"k":1}`)},
			"@dan:other.test":  {"*": json.RawMessage(`{"k":2}`)},
			"@me:local.test":   {"X": json.RawMessage(`{"k":3}`)},
		}
		if err := f.sender.SendToDevice(ctx, alice, "m.test", msgs); err != nil {
			t.Fatal(err)
		}
		if err := f.sender.SendTyping(ctx, roomID, "@bob:remote.test", true); err == nil {
			t.Fatal("the sender sent a remote user's typing")
		}
		time.Sleep(100 * time.Millisecond)
		f.remote.setFail(nil)
		f.sender.MarkAlive("remote.test")

		byType := func(dest spec.ServerName) map[string][]gjson.Result {
			out := map[string][]gjson.Result{}
			for _, e := range f.remote.acceptedEDUs(dest) {
				out[e.Type] = append(out[e.Type], gjson.ParseBytes(e.Content))
			}
			return out
		}
		senderWait(t, "EDUs", func() bool { return len(byType("remote.test")) == 4 && len(byType("other.test")) == 4 })
		got := byType("remote.test")
		// (A change already in a transaction that failed is not replaced.)
		if typing := got["m.typing"]; len(typing) == 0 || !typing[len(typing)-1].Get("typing").Bool() || typing[0].Get("user_id").Str != alice {
			t.Fatalf("typing: %v", typing)
		}
		if r := got["m.receipt"]; len(r) != 1 || r[0].Get(gjson.Escape(roomID)+".m\\.read."+gjson.Escape(alice)+".event_ids.0").Str != "$ev" {
			t.Fatalf("receipt: %v", r)
		}
		if p := got["m.presence"]; len(p) != 1 || p[0].Get("push.0.status_msg").Str != "hi" || p[0].Get("push.0.user_id").Str != alice {
			t.Fatalf("presence: %v", p)
		}
		td := got["m.direct_to_device"]
		if len(td) != 1 || td[0].Get("messages.@bob:remote\\.test.DEV.k").Int() != 1 || td[0].Get("messages.@dan:other\\.test").Exists() ||
			td[0].Get("message_id").Str == "" || td[0].Get("sender").Str != alice {
			t.Fatalf("to-device for remote.test: %v", td)
		}
		if td := byType("other.test")["m.direct_to_device"]; len(td) != 1 || td[0].Get("messages.@dan:other\\.test.*.k").Int() != 2 {
			t.Fatalf("to-device for other.test: %v", td)
		}
	})
}

// Events that go nowhere (other servers' events) do not each write the
// sender's position; after a restart the few read again are still not
// sent, and nothing is sent twice.
func TestSenderStoresItsPositionLazilyAfterEventsThatGoNowhere(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		f.send("first")
		senderWait(t, "first delivery", func() bool {
			return len(f.remote.acceptedPDUs("remote.test")) == 1 && len(f.remote.acceptedPDUs("other.test")) == 1
		})
		carol := testroom.NewServer(t, "remote.test").User("carol")
		f.room.Join(carol)
		f.stream.add(f.room.Last())
		for i := range 5 {
			f.room.Send(carol, fmt.Sprint("carol ", i))
			f.stream.add(f.room.Last())
		}
		var end int64
		senderWait(t, "the sender to read carol's events", func() bool {
			f.stream.mu.Lock()
			defer f.stream.mu.Unlock()
			end = int64(len(f.stream.out))
			return f.stream.readUpTo >= end
		})
		stored, _, err := f.sender.store.position(context.Background(), senderConsumer)
		if err != nil {
			t.Fatal(err)
		}
		if stored >= end {
			t.Fatalf("position stored after each event that went nowhere (%d)", stored)
		}
		f.stop()
		f.start()
		f.send("after restart")
		want := []string{"first", "after restart"}
		senderWait(t, "delivery after restart", func() bool { return len(f.remote.acceptedPDUs("other.test")) >= len(want) })
		time.Sleep(50 * time.Millisecond)
		for _, dest := range []spec.ServerName{"remote.test", "other.test"} {
			if got := f.remote.acceptedPDUs(dest); !slices.Equal(got, want) {
				t.Fatalf("%s got %v, want %v", dest, got, want)
			}
		}
	})
}

// An event a server signed (the resident server of a join we made through
// it) is not sent back to that server; the others get it.
func TestSenderSkipsServersThatSignedTheEvent(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		resident := testroom.NewServer(t, "remote.test")
		f.room.Send(f.alice, "countersigned")
		signed := f.room.Last().Sign(string(resident.Name), resident.KeyID, resident.PrivateKey)
		f.stream.add(signed)
		f.send("after")
		senderWait(t, "delivery", func() bool {
			return len(f.remote.acceptedPDUs("other.test")) == 2 && len(f.remote.acceptedPDUs("remote.test")) >= 1
		})
		if got := f.remote.acceptedPDUs("remote.test"); !slices.Equal(got, []string{"after"}) {
			t.Fatalf("remote.test got %v, want only the event it did not sign", got)
		}
		if got := f.remote.acceptedPDUs("other.test"); !slices.Equal(got, []string{"countersigned", "after"}) {
			t.Fatalf("other.test got %v", got)
		}
	})
}

// An event a server took in a membership handshake (our join through
// it) is not sent to it again; the room's other servers get it.
func TestSenderSkipsTheServerAnEventWasHandedTo(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		f := newSenderFixture(t, db)
		f.room.Send(f.alice, "handed over")
		f.sender.HandedTo(f.room.Last().EventID(), "remote.test")
		f.stream.add(f.room.Last())
		f.send("after")
		senderWait(t, "delivery", func() bool {
			return len(f.remote.acceptedPDUs("other.test")) == 2 && len(f.remote.acceptedPDUs("remote.test")) >= 1
		})
		if got := f.remote.acceptedPDUs("remote.test"); !slices.Equal(got, []string{"after"}) {
			t.Fatalf("remote.test got %v, want only the event it was not handed", got)
		}
	})
}
