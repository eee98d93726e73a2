package bench

// Benchmarks of a whole Plexus over HTTP (internal/testserver: in-process,
// loopback, SQLite, rate limits off), driven by this package's client as a
// Matrix client would:
//
//	go test -run '^$' -bench . -benchtime 2s -timeout 30m ./internal/bench/
//
// They assert nothing about time; docs/performance.md records the figures.
// With PLEXUS_BENCH_PROFILE=DIR each benchmark also writes a CPU profile
// of its measured part only (not its setup) to DIR/<name>.cpu; read it
// with go tool pprof. (go test -cpuprofile would mix in the setup, which
// for the 10,000-member room is most of the time.)
// BenchmarkHTTPJoin and BenchmarkHTTPLargeRoom build a 10,000-member room
// (about a minute each), so they run only under -bench.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

var benchCtx = context.Background()

// newServer starts a test server and a client for it.
func newServer(b *testing.B) (*testserver.Server, *Client) {
	b.Helper()
	s := testserver.New(b)
	return s, NewClient(s.URL)
}

func mustRegister(b *testing.B, c *Client, localpart string) *User {
	b.Helper()
	u, err := c.Register(benchCtx, localpart, "bench-password-1")
	if err != nil {
		b.Fatal(err)
	}
	return u
}

func mustCreateRoom(b *testing.B, c *Client, u *User) string {
	b.Helper()
	roomID, err := c.CreateRoom(benchCtx, u, PublicRoom("bench"))
	if err != nil {
		b.Fatal(err)
	}
	return roomID
}

// profile starts a CPU profile of the rest of the benchmark when
// PLEXUS_BENCH_PROFILE names a folder; call the function it returns when
// the measured part ends.
func profile(b *testing.B) func() {
	dir := os.Getenv("PLEXUS_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, strings.NewReplacer("/", "_", "=", "").Replace(b.Name())+".cpu"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

func reportRate(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit)
	}
}

// BenchmarkHTTPSend sends m.room.message events with PUT /send: one
// sender into one room, and 8 concurrent senders (each its own user,
// waiting for each answer) into 1, 4 and 64 rooms. ns/op is the time per
// event over all senders.
func BenchmarkHTTPSend(b *testing.B) {
	_, c := newServer(b)
	owner := mustRegister(b, c, "owner")
	senders := make([]*User, 8)
	for i := range senders {
		senders[i] = mustRegister(b, c, fmt.Sprintf("sender%d", i))
	}
	b.Run("rooms=1/senders=1", func(b *testing.B) {
		roomID := mustCreateRoom(b, c, owner)
		b.ReportAllocs()
		b.ResetTimer()
		defer profile(b)()
		for b.Loop() {
			if _, err := c.Send(benchCtx, owner, roomID); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, "events/s")
	})
	for _, rooms := range []int{1, 4, 64} {
		b.Run(fmt.Sprintf("rooms=%d/senders=8", rooms), func(b *testing.B) {
			ids := make([]string, rooms)
			for i := range ids {
				ids[i] = mustCreateRoom(b, c, owner)
			}
			// Sender i sends into room i % rooms, or with more rooms than
			// senders into rooms i, i+8, i+16, … in turn.
			roomsOf := make([][]string, len(senders))
			for i, u := range senders {
				for r := i % rooms; r < rooms; r += len(senders) {
					roomsOf[i] = append(roomsOf[i], ids[r])
					if err := c.Join(benchCtx, u, ids[r]); err != nil {
						b.Fatal(err)
					}
				}
			}
			var next atomic.Int64
			// RunParallel starts parallelism × GOMAXPROCS goroutines.
			b.SetParallelism(max(1, len(senders)/runtime.GOMAXPROCS(0)))
			b.ReportAllocs()
			b.ResetTimer()
			defer profile(b)()
			b.RunParallel(func(pb *testing.PB) {
				g := int(next.Add(1)-1) % len(senders)
				u, mine := senders[g], roomsOf[g]
				for i := 0; pb.Next(); i++ {
					if _, err := c.Send(benchCtx, u, mine[i%len(mine)]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b, "events/s")
		})
	}
}

// BenchmarkHTTPCreateRoom creates public_chat rooms with POST /createRoom,
// one after another.
func BenchmarkHTTPCreateRoom(b *testing.B) {
	_, c := newServer(b)
	owner := mustRegister(b, c, "owner")
	b.ReportAllocs()
	defer profile(b)()
	for b.Loop() {
		mustCreateRoom(b, c, owner)
	}
	reportRate(b, "rooms/s")
}

// growRoom joins fake local users (@fillN, who need no accounts: the
// roomserver takes their joins as it would theirs) until the room has n
// members, then waits for the sync API to have consumed them all, so that
// its work does not fall into the measurement.
func growRoom(b *testing.B, s *testserver.Server, roomID string, members *int, n int) {
	b.Helper()
	rs := s.Server.Roomserver
	start := time.Now()
	from := *members
	for ; *members < n; *members++ {
		user := fmt.Sprintf("@fill%d:%s", *members, s.Config.ServerName)
		if _, err := rs.SendEvent(benchCtx, rsapi.NewEvent{RoomID: roomID, Sender: user, Type: "m.room.member",
			StateKey: &user, Content: json.RawMessage(`{"membership":"join"}`)}); err != nil {
			b.Fatal(err)
		}
	}
	waitForSync(b, s)
	if n-from > 100 {
		b.Logf("grew the room from %d to %d members in %v", from, n, time.Since(start).Round(time.Millisecond))
	}
}

// waitForSync waits until the sync API has consumed the roomserver's
// whole output stream. It reads the sync API's consumer position from its
// table: a benchmark's shortcut, not something components may do.
func waitForSync(b *testing.B, s *testserver.Server) {
	b.Helper()
	latest, err := s.Server.Roomserver.LatestPosition(benchCtx)
	if err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var pos int64
		err := s.Server.DB.Reader().QueryRowContext(benchCtx, `SELECT pos FROM syncapi_consumer WHERE name = 'roomserver_output'`).Scan(&pos)
		if err != nil && err != sql.ErrNoRows {
			b.Fatal(err)
		}
		if pos >= latest {
			return
		}
	}
	b.Fatal("the sync API did not catch up")
}

// BenchmarkHTTPJoin measures POST /join that makes member N of a public
// room, for N = 10, 100, 1,000 and 10,000: the room grows to N-1 once per
// size (outside the timer), then each iteration a freshly registered user
// joins (timed) and leaves again (not timed, reported as leave-ns/op), so
// the room stays at N-1 members. Flat ns/op across N is the point.
func BenchmarkHTTPJoin(b *testing.B) {
	s, c := newServer(b)
	owner := mustRegister(b, c, "owner")
	roomID := mustCreateRoom(b, c, owner)
	members := 1
	joiners := 0
	for _, n := range []int{10, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			growRoom(b, s, roomID, &members, n-1)
			var leave time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			defer profile(b)()
			for b.Loop() {
				b.StopTimer()
				joiners++
				u := mustRegister(b, c, fmt.Sprintf("joiner%d", joiners))
				b.StartTimer()
				if err := c.Join(benchCtx, u, roomID); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				t := time.Now()
				if err := c.Leave(benchCtx, u, roomID); err != nil {
					b.Fatal(err)
				}
				leave += time.Since(t)
				waitForSync(b, s)
				b.StartTimer()
			}
			b.ReportMetric(float64(leave.Nanoseconds())/float64(b.N), "leave-ns/op")
		})
	}
}

// BenchmarkHTTPLargeRoom reads a 10,000-member room as one of its members:
// GET /members, /joined_members, /state, one state event, and PUT /send
// into it.
func BenchmarkHTTPLargeRoom(b *testing.B) {
	s, c := newServer(b)
	owner := mustRegister(b, c, "owner")
	roomID := mustCreateRoom(b, c, owner)
	members := 1
	growRoom(b, s, roomID, &members, 10000)
	room := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
	for _, r := range []struct {
		name, path string
		minBytes   int
	}{
		{"members", room + "/members", 10000 * 100},
		{"joined_members", room + "/joined_members", 10000 * 20},
		{"state", room + "/state", 10000 * 100},
		{"state_event", room + "/state/m.room.member/" + url.PathEscape(fmt.Sprintf("@fill4242:%s", s.Config.ServerName)), 10},
	} {
		b.Run(r.name, func(b *testing.B) {
			var size int
			b.ReportAllocs()
			stop := profile(b)
			for b.Loop() {
				body, err := c.Get(benchCtx, owner, r.path)
				if err != nil {
					b.Fatal(err)
				}
				size = len(body)
			}
			stop()
			if size < r.minBytes {
				b.Fatalf("answer of %d bytes is too short", size)
			}
			b.ReportMetric(float64(size), "resp-bytes")
		})
	}
	b.Run("send", func(b *testing.B) {
		b.ReportAllocs()
		stop := profile(b)
		for b.Loop() {
			if _, err := c.Send(benchCtx, owner, roomID); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		waitForSync(b, s)
		stop()
	})
}

// BenchmarkHTTPSync measures /sync for a user in 5 rooms of 10 members
// with 50 messages each: an initial sync, and an incremental sync that
// finds one new message.
func BenchmarkHTTPSync(b *testing.B) {
	s, c := newServer(b)
	user := mustRegister(b, c, "syncer")
	others := make([]*User, 9)
	for i := range others {
		others[i] = mustRegister(b, c, fmt.Sprintf("other%d", i))
	}
	var rooms []string
	for range 5 {
		roomID := mustCreateRoom(b, c, user)
		for _, o := range others {
			if err := c.Join(benchCtx, o, roomID); err != nil {
				b.Fatal(err)
			}
		}
		for i := range 50 {
			if _, err := c.Send(benchCtx, others[i%len(others)], roomID); err != nil {
				b.Fatal(err)
			}
		}
		rooms = append(rooms, roomID)
	}
	waitForSync(b, s)
	b.Run("initial", func(b *testing.B) {
		var last []byte
		b.ReportAllocs()
		stop := profile(b)
		for b.Loop() {
			_, body, err := c.Sync(benchCtx, user, "")
			if err != nil {
				b.Fatal(err)
			}
			last = body
		}
		stop()
		for _, roomID := range rooms {
			if !strings.Contains(string(last), roomID) {
				b.Fatalf("initial sync misses room %s", roomID)
			}
		}
		b.ReportMetric(float64(len(last)), "resp-bytes")
	})
	b.Run("incremental", func(b *testing.B) {
		since, _, err := c.Sync(benchCtx, user, "")
		if err != nil {
			b.Fatal(err)
		}
		i := 0
		b.ReportAllocs()
		defer profile(b)()
		for b.Loop() {
			b.StopTimer()
			i++
			if _, err := c.Send(benchCtx, others[i%len(others)], rooms[i%len(rooms)]); err != nil {
				b.Fatal(err)
			}
			waitForSync(b, s)
			b.StartTimer()
			next, body, err := c.Sync(benchCtx, user, since)
			if err != nil {
				b.Fatal(err)
			}
			if !strings.Contains(string(body), "m.room.message") {
				b.Fatalf("incremental sync without the new message: %s", body)
			}
			since = next
		}
	})
}

// BenchmarkHTTPRoomFootprint creates rooms over HTTP (public_chat, a
// second member, ten messages) and reports what each costs the whole
// server: db-bytes/room (the SQLite file after a WAL checkpoint: the
// roomserver's, sync API's and every other table) and heap-bytes/room
// (live heap after a GC, caches included).
func BenchmarkHTTPRoomFootprint(b *testing.B) {
	s, c := newServer(b)
	owner := mustRegister(b, c, "owner")
	guest := mustRegister(b, c, "second")
	path := s.Config.Database
	dbSize := func() int64 {
		waitForSync(b, s)
		var busy, logPages, done int
		if err := s.Server.DB.Writer().QueryRowContext(benchCtx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logPages, &done); err != nil {
			b.Fatal(err)
		}
		var total int64
		for _, p := range []string{path, path + "-wal"} {
			if fi, err := os.Stat(p); err == nil {
				total += fi.Size()
			}
		}
		return total
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	mustCreateRoom(b, c, owner)
	size0, heap0 := dbSize(), heap()
	b.ResetTimer()
	for b.Loop() {
		roomID := mustCreateRoom(b, c, owner)
		if err := c.Join(benchCtx, guest, roomID); err != nil {
			b.Fatal(err)
		}
		for i := range 10 {
			u := owner
			if i%2 == 1 {
				u = guest
			}
			if _, err := c.Send(benchCtx, u, roomID); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(dbSize()-size0)/float64(b.N), "db-bytes/room")
	b.ReportMetric((float64(heap())-float64(heap0))/float64(b.N), "heap-bytes/room")
}

// BenchmarkHTTPDelivery measures what plexus-load's delivery phase does:
// one user holds a /sync long-poll (the server has held it for 20 ms,
// untimed), another sends a message into one of their rooms, and the
// operation is the time from just before the PUT until the long-poll
// returns with the message. The syncing user is in 1 room, or in 50 with
// 20 messages each as in plexus-load. put-ms is the PUT alone (median);
// p50-ms and p99-ms are percentiles of the deliveries.
func BenchmarkHTTPDelivery(b *testing.B) {
	for _, rooms := range []int{1, 50} {
		b.Run(fmt.Sprintf("rooms=%d", rooms), func(b *testing.B) { benchDelivery(b, rooms) })
	}
}

func benchDelivery(b *testing.B, rooms int) {
	s, c := newServer(b)
	sender := mustRegister(b, c, "sender")
	syncer := mustRegister(b, c, "syncer")
	var roomID string
	for range rooms {
		roomID = mustCreateRoom(b, c, sender)
		if err := c.Join(benchCtx, syncer, roomID); err != nil {
			b.Fatal(err)
		}
		for range 20 {
			if _, err := c.Send(benchCtx, sender, roomID); err != nil {
				b.Fatal(err)
			}
		}
	}
	waitForSync(b, s)
	filter := syncFilter(20)
	since, _, err := c.Sync(benchCtx, syncer, "")
	if err != nil {
		b.Fatal(err)
	}
	var lat, put Recorder
	stop := profile(b)
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		// deliverOnce times itself; the benchmark's clock runs only
		// around the measured part it reports.
		d, err := deliverOnce(benchCtx, c, sender, syncer, roomID, since, filter, fmt.Sprintf("bench delivery %d", i), 20*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		if d.EarlyWakes > 0 {
			b.Fatalf("the long-poll woke %d times before the message", d.EarlyWakes)
		}
		since = d.Since
		lat.Add(d.Latency)
		put.Add(d.Put)
		b.StartTimer()
	}
	stop()
	st := lat.Stats()
	b.ReportMetric(float64(st.P50)/1e6, "p50-ms")
	b.ReportMetric(float64(st.P99)/1e6, "p99-ms")
	b.ReportMetric(float64(put.Stats().P50)/1e6, "put-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkHTTPMessages pages backwards through 2,000 messages with
// /messages?dir=b&limit=50 as plexus-load's /messages phase does; the
// operation is one page.
func BenchmarkHTTPMessages(b *testing.B) {
	s, c := newServer(b)
	reader := mustRegister(b, c, "reader")
	roomID := mustCreateRoom(b, c, reader)
	err := Parallel(benchCtx, 2000, 8, func(ctx context.Context, i int) error {
		_, err := c.SendText(ctx, reader, roomID, fmt.Sprintf("history %d", i))
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	waitForSync(b, s)
	next, _, err := c.Sync(benchCtx, reader, "")
	if err != nil {
		b.Fatal(err)
	}
	from := next
	b.ReportAllocs()
	defer profile(b)()
	for b.Loop() {
		page, err := c.Messages(benchCtx, reader, roomID, from, 50)
		if err != nil {
			b.Fatal(err)
		}
		if len(page.Chunk) == 0 || page.End == "" {
			from = next // the start of the room: page from the newest end again
			continue
		}
		from = page.End
	}
}
