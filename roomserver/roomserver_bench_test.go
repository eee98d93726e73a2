package roomserver

// Benchmarks of the roomserver through its Go API, on SQLite (and
// PostgreSQL too when PLEXUS_TEST_POSTGRES is set):
//
//	go test -run '^$' -bench . -benchtime 2s ./roomserver/
//
// They assert nothing about time; docs/performance.md records the figures.
// BenchmarkJoin builds a 10,000-member room in its setup (about a minute),
// so it runs only under -bench, never in a plain go test. With
// PLEXUS_BENCH_PROFILE=DIR the join and large-room benchmarks also write a
// CPU profile of their measured part only to DIR/<name>.cpu.

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

const benchServer = "bench.local"

// benchEachDB runs a benchmark against a fresh roomserver on each test
// database; the SQLite file's path is passed along ("" for PostgreSQL) so
// that benchmarks can weigh it.
func benchEachDB(b *testing.B, fn func(b *testing.B, rs *Roomserver, sqlitePath string)) {
	for name, conn := range storagetest.Connections(b) {
		b.Run(name, func(b *testing.B) {
			db, err := storage.Open(conn)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			_, key, _ := ed25519.GenerateKey(nil)
			rs, err := New(context.Background(), db, benchServer, "ed25519:b", key)
			if err != nil {
				b.Fatal(err)
			}
			path := ""
			if !storage.IsPostgresURL(conn) {
				path = conn
			}
			fn(b, rs, path)
		})
	}
}

func benchUser(i int) string { return fmt.Sprintf("@u%d:%s", i, benchServer) }

// benchPublicRoom is what POST /createRoom with preset public_chat makes,
// in the default room version.
func benchPublicRoom(creator string) api.CreateRoomRequest {
	return api.CreateRoomRequest{
		Version: gomatrixserverlib.RoomVersionV12, Creator: creator,
		InitialState: []api.StateEvent{
			{Type: "m.room.member", StateKey: creator, Content: map[string]any{"membership": "join"}},
			{Type: "m.room.power_levels", Content: map[string]any{"users": map[string]int{}, "users_default": 0,
				"events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0}},
			{Type: "m.room.join_rules", Content: map[string]any{"join_rule": "public"}},
			{Type: "m.room.history_visibility", Content: map[string]any{"history_visibility": "shared"}},
			{Type: "m.room.guest_access", Content: map[string]any{"guest_access": "forbidden"}},
		},
	}
}

func mustCreate(b *testing.B, rs *Roomserver, creator string) string {
	b.Helper()
	roomID, err := rs.CreateRoom(context.Background(), benchPublicRoom(creator))
	if err != nil {
		b.Fatal(err)
	}
	return roomID
}

var benchMessage = json.RawMessage(`{"msgtype":"m.text","body":"The quick brown fox jumps over the lazy dog"}`)

func sendMessage(rs *Roomserver, roomID, sender string) error {
	_, err := rs.SendEvent(context.Background(), api.NewEvent{RoomID: roomID, Sender: sender, Type: "m.room.message", Content: benchMessage})
	return err
}

func setMembership(rs *Roomserver, roomID, user, membership string) error {
	content, _ := json.Marshal(map[string]string{"membership": membership})
	_, err := rs.SendEvent(context.Background(), api.NewEvent{RoomID: roomID, Sender: user, Type: "m.room.member", StateKey: &user, Content: content})
	return err
}

// BenchmarkSendMessage sends m.room.message events: one after another into
// one room, and from 8 concurrent senders into 1, 4 and 64 rooms (each
// sender keeps to one room, senders share rooms round-robin). ns/op is
// the time per event over all senders; events/s is its inverse.
func BenchmarkSendMessage(b *testing.B) {
	benchEachDB(b, func(b *testing.B, rs *Roomserver, _ string) {
		b.Run("rooms=1/senders=1", func(b *testing.B) {
			roomID := mustCreate(b, rs, benchUser(0))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := sendMessage(rs, roomID, benchUser(0)); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, "events/s")
		})
		for _, rooms := range []int{1, 4, 64} {
			b.Run(fmt.Sprintf("rooms=%d/senders=8", rooms), func(b *testing.B) {
				ids := make([]string, rooms)
				for i := range ids {
					ids[i] = mustCreate(b, rs, benchUser(0))
				}
				var next atomic.Int64
				// RunParallel starts parallelism × GOMAXPROCS goroutines.
				b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					roomID := ids[int(next.Add(1)-1)%rooms]
					for pb.Next() {
						if err := sendMessage(rs, roomID, benchUser(0)); err != nil {
							b.Error(err)
							return
						}
					}
				})
				reportRate(b, "events/s")
			})
		}
	})
}

// benchProfile starts a CPU profile of the rest of the benchmark when
// PLEXUS_BENCH_PROFILE names a folder; call the function it returns when
// the measured part ends.
func benchProfile(b *testing.B) func() {
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

// reportRate reports b.N per second of elapsed benchmark time.
func reportRate(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit)
	}
}

// BenchmarkCreateRoom creates public_chat rooms (create event, the
// creator's join and five state events, one transaction).
func BenchmarkCreateRoom(b *testing.B) {
	benchEachDB(b, func(b *testing.B, rs *Roomserver, _ string) {
		b.ReportAllocs()
		for b.Loop() {
			mustCreate(b, rs, benchUser(0))
		}
		reportRate(b, "rooms/s")
	})
}

// growRoom joins users until the room has n members; members counts them.
func growRoom(b *testing.B, rs *Roomserver, roomID string, members *int, n int) {
	b.Helper()
	start := time.Now()
	from := *members
	for *members < n {
		if err := setMembership(rs, roomID, benchUser(*members), "join"); err != nil {
			b.Fatal(err)
		}
		*members++
	}
	if n-from > 100 {
		b.Logf("grew the room from %d to %d members in %v", from, n, time.Since(start).Round(time.Millisecond))
	}
}

// BenchmarkJoin measures the join that makes member N of a public room,
// for N = 10, 100, 1,000 and 10,000: the room is grown to N-1 members
// once (outside the timer, growing from one size to the next), then each
// iteration joins a new user (timed) and has them leave again (not timed,
// reported as leave-ns/op), so the room stays at N-1 members between
// iterations. Flat ns/op across N is the point.
func BenchmarkJoin(b *testing.B) {
	benchEachDB(b, func(b *testing.B, rs *Roomserver, _ string) {
		roomID := mustCreate(b, rs, benchUser(0))
		members := 1
		joiner := 1_000_000
		for _, n := range []int{10, 100, 1000, 10000} {
			b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
				growRoom(b, rs, roomID, &members, n-1)
				var leave time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				defer benchProfile(b)()
				for b.Loop() {
					joiner++
					if err := setMembership(rs, roomID, benchUser(joiner), "join"); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					t := time.Now()
					if err := setMembership(rs, roomID, benchUser(joiner), "leave"); err != nil {
						b.Fatal(err)
					}
					leave += time.Since(t)
					b.StartTimer()
				}
				b.ReportMetric(float64(leave.Nanoseconds())/float64(b.N), "leave-ns/op")
			})
		}
	})
}

// BenchmarkLargeRoomReads reads a 10,000-member room: the whole current
// state (what GET /state serves), the m.room.member events (GET
// /members), one state event, and a message sent into it.
func BenchmarkLargeRoomReads(b *testing.B) {
	benchEachDB(b, func(b *testing.B, rs *Roomserver, _ string) {
		ctx := context.Background()
		roomID := mustCreate(b, rs, benchUser(0))
		members := 1
		growRoom(b, rs, roomID, &members, 10000)
		rm, err := rs.loadRoom(ctx, rs.db.Reader(), roomID)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("CurrentState", func(b *testing.B) {
			b.ReportAllocs()
			defer benchProfile(b)()
			for b.Loop() {
				evs, err := rs.CurrentState(ctx, roomID)
				if err != nil || len(evs) < 10000 {
					b.Fatalf("%d events, %v", len(evs), err)
				}
			}
		})
		b.Run("StateAt/m.room.member", func(b *testing.B) {
			b.ReportAllocs()
			defer benchProfile(b)()
			for b.Loop() {
				evs, err := rs.StateAt(ctx, int64(rm.snapshot), "m.room.member")
				if err != nil || len(evs) != 10000 {
					b.Fatalf("%d events, %v", len(evs), err)
				}
			}
		})
		b.Run("CurrentStateEvent", func(b *testing.B) {
			b.ReportAllocs()
			defer benchProfile(b)()
			for b.Loop() {
				ev, err := rs.CurrentStateEvent(ctx, roomID, "m.room.member", benchUser(4242))
				if err != nil || ev == nil {
					b.Fatal(ev, err)
				}
			}
		})
		b.Run("SendMessage", func(b *testing.B) {
			b.ReportAllocs()
			defer benchProfile(b)()
			for b.Loop() {
				if err := sendMessage(rs, roomID, benchUser(4242)); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkRoomFootprint creates rooms of two members and ten messages
// each and reports what a room costs: db-bytes/room (the SQLite file
// after a WAL checkpoint; PostgreSQL is not weighed) and heap-bytes/room
// (live heap after a GC, which includes the roomserver's caches).
func BenchmarkRoomFootprint(b *testing.B) {
	benchEachDB(b, func(b *testing.B, rs *Roomserver, path string) {
		ctx := context.Background()
		dbSize := func() int64 {
			if path == "" {
				return 0
			}
			if _, err := rs.db.Writer().ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
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
		mustCreate(b, rs, benchUser(0)) // first use: migrations' pages, caches of fixed IDs
		size0, heap0 := dbSize(), heap()
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			roomID := mustCreate(b, rs, benchUser(0))
			if err := setMembership(rs, roomID, benchUser(1), "join"); err != nil {
				b.Fatal(err)
			}
			for i := range 10 {
				if err := sendMessage(rs, roomID, benchUser(i%2)); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StopTimer()
		if path != "" {
			b.ReportMetric(float64(dbSize()-size0)/float64(b.N), "db-bytes/room")
		}
		b.ReportMetric((float64(heap())-float64(heap0))/float64(b.N), "heap-bytes/room")
	})
}
