// Command plexus-load drives a Matrix homeserver's client-server API over
// HTTP and reports how fast it answers. It uses only the public API (and
// shared-secret registration when given a secret), so it measures Plexus,
// Dendrite or Synapse alike. Run the server with rate limits off.
//
//	plexus-load -url http://127.0.0.1:8008 -mode all -pid $(pidof plexus)
//
// plexus-load compare a.json b.json prints two -json reports side by side
// with the ratios b/a.
//
// Modes (comma-separated, or all):
//
//	create  -senders goroutines create public rooms for -duration: rooms/s
//	send    -senders goroutines join -rooms rooms, then send messages (sender
//	        i into room i % rooms, each waiting for its answer) for -duration
//	        after -warmup: events/s
//	sync    the sync API (internal/bench/syncload.go): delivery latency from
//	        PUT /send to a waiting /sync, initial sync in 50 rooms × 20
//	        messages, incremental syncs, /messages pages of 50 over 2,000
//	        events, and (with -pid) memory with -longpolls long-polls held
//	        (not part of all: run it on a fresh server)
//	longpolls  only the sync mode's long-poll memory reading (-longpolls)
//	join    one public room grows to each of -members; at each size -samples
//	        fresh users join (timed: the join that makes member N) and leave,
//	        each join starting on an idle server (with -pid: CPU at rest)
//
// Senders and creators act as the -users registered users, round-robin.
//
// With -pid, the server's CPU time (utime+stime from /proc) is read from
// when it is idle before a phase until it is idle again after (so that
// background work the phase caused counts) and reported per operation,
// and its resident memory at the start and, after -settle, at the end. Users are named after -prefix
// (random by default) so runs against one server do not collide.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/plexus-chat/plexus/internal/bench"
)

type options struct {
	url, secret, modes, prefix, jsonOut string
	users, rooms, senders, samples      int
	conc, pid, longPolls, syncSamples   int
	duration, warmup, settle            time.Duration
	members                             []int
}

// Report is what a run measured; -json writes it.
type Report struct {
	URL      string            `json:"url"`
	Started  time.Time         `json:"started"`
	Create   *Phase            `json:"create,omitempty"`
	Send     *Phase            `json:"send,omitempty"`
	Join     []bench.JoinPoint `json:"join,omitempty"`
	Sync     *bench.SyncReport `json:"sync,omitempty"`
	RSSStart int64             `json:"rss_start_bytes,omitempty"`
	RSSEnd   int64             `json:"rss_end_bytes,omitempty"`
}

// Phase is one timed load.
type Phase struct {
	Concurrency int           `json:"concurrency"`
	Rooms       int           `json:"rooms,omitempty"`
	Result      bench.Result  `json:"result"`
	PerSecond   float64       `json:"per_second"`
	ServerCPU   time.Duration `json:"server_cpu_ns,omitempty"`
	CPUPerOp    time.Duration `json:"server_cpu_per_op_ns,omitempty"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "compare" {
		if len(os.Args) != 4 {
			fatalf("usage: plexus-load compare a.json b.json")
		}
		if err := compare(os.Args[2], os.Args[3]); err != nil {
			fatalf("%v", err)
		}
		return
	}
	var o options
	var members string
	flag.StringVar(&o.url, "url", "http://127.0.0.1:8008", "homeserver base URL")
	flag.StringVar(&o.secret, "secret", "", "registration shared secret (default: open registration with m.login.dummy)")
	flag.StringVar(&o.modes, "mode", "all", "what to measure: create, send, join (comma-separated) or all")
	flag.StringVar(&o.prefix, "prefix", "", "user name prefix (default: random)")
	flag.IntVar(&o.users, "users", 8, "users to register for create and send (senders and creators take them round-robin)")
	flag.IntVar(&o.rooms, "rooms", 4, "rooms to send into")
	flag.IntVar(&o.senders, "senders", 8, "concurrent senders (and room creators)")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long each create and send phase runs")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured sending before the send phase")
	flag.StringVar(&members, "members", "10,100,700", "join mode: room sizes to measure the join that makes member N")
	flag.IntVar(&o.samples, "samples", 20, "join mode: joins measured at each size")
	flag.IntVar(&o.conc, "conc", 8, "concurrency of the setup (registration, growing the room)")
	flag.IntVar(&o.pid, "pid", 0, "server process ID, to report its CPU time and memory (Linux /proc)")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "with -pid: idle time before the final memory reading")
	flag.IntVar(&o.longPolls, "longpolls", 1000, "sync mode: users holding a /sync long-poll at once for the memory reading (0: skip)")
	flag.IntVar(&o.syncSamples, "sync-samples", 200, "sync mode: deliveries and incremental syncs measured (initial syncs: a tenth)")
	flag.StringVar(&o.jsonOut, "json", "", "also write the report as JSON to this file")
	flag.Parse()
	for _, s := range strings.Split(members, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 2 {
			fatalf("-members: %q is not a room size of at least 2", s)
		}
		o.members = append(o.members, n)
	}
	if o.prefix == "" {
		o.prefix = fmt.Sprintf("load%04x", rand.IntN(1<<16))
	}
	if o.users < 1 || o.rooms < 1 || o.senders < 1 {
		fatalf("-users, -rooms and -senders must be at least 1")
	}
	if err := run(context.Background(), o); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "plexus-load: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Printf("%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(ctx context.Context, o options) error {
	c := bench.NewClient(o.url)
	c.SharedSecret = o.secret
	want := map[string]bool{}
	for _, m := range strings.Split(o.modes, ",") {
		switch m = strings.TrimSpace(m); m {
		case "all":
			want["create"], want["send"], want["join"] = true, true, true
		case "create", "send", "join", "sync", "longpolls":
			want[m] = true
		default:
			return fmt.Errorf("unknown mode %q", m)
		}
	}
	rep := Report{URL: o.url, Started: time.Now()}
	if o.pid != 0 {
		p, err := bench.ReadProc(o.pid)
		if err != nil {
			return err
		}
		rep.RSSStart = p.RSS
		logf("server pid %d: RSS %.1f MiB at start", o.pid, mib(p.RSS))
	}
	start := time.Now()
	users, err := bench.RegisterUsers(ctx, c, o.prefix+"s", o.users, o.conc)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	logf("registered %d users in %v", len(users), time.Since(start).Round(time.Millisecond))

	if want["create"] {
		creators := make([]*bench.User, o.senders)
		for i := range creators {
			creators[i] = users[i%len(users)]
		}
		ph, err := measure(o, "create", func() bench.Result { return bench.CreateLoad(ctx, c, creators, o.duration) })
		if err != nil {
			return err
		}
		ph.Concurrency = o.senders
		rep.Create = ph
		logf("create: %d creators for %v: %d rooms, %.1f rooms/s, %s%s", o.senders, o.duration,
			ph.Result.Ops, ph.PerSecond, ph.Result.Latency, cpuNote(ph, "room"))
	}
	if want["send"] {
		ph, err := sendPhase(ctx, c, o, users)
		if err != nil {
			return err
		}
		rep.Send = ph
	}
	if want["join"] {
		// A join that fails part way still reports the sizes it measured.
		pts, err := joinPhase(ctx, c, o, users[0])
		if err != nil {
			logf("join: %v", err)
		}
		rep.Join = pts
	}
	if want["sync"] {
		cfg := bench.DefaultSyncConfig()
		cfg.Prefix, cfg.PID, cfg.Conc, cfg.Log = o.prefix, o.pid, o.conc, logf
		cfg.LongPolls, cfg.Deliveries, cfg.Incremental = o.longPolls, o.syncSamples, o.syncSamples
		cfg.Initial = max(5, o.syncSamples/10)
		raiseFileLimit(o.longPolls + 256)
		sr, err := bench.RunSync(ctx, c, cfg)
		rep.Sync = sr
		if err != nil {
			logf("sync: %v", err)
			if sr == nil {
				return err
			}
		}
	}
	if want["longpolls"] {
		cfg := bench.DefaultSyncConfig()
		cfg.Prefix, cfg.PID, cfg.Conc, cfg.Log, cfg.LongPolls = o.prefix, o.pid, o.conc, logf, o.longPolls
		raiseFileLimit(o.longPolls + 256)
		sr, err := bench.RunLongPolls(ctx, c, cfg)
		if rep.Sync == nil {
			rep.Sync = sr
		}
		if err != nil {
			return err
		}
	}
	if o.pid != 0 {
		time.Sleep(o.settle)
		p, err := bench.ReadProc(o.pid)
		if err != nil {
			return err
		}
		rep.RSSEnd = p.RSS
		logf("server pid %d: RSS %.1f MiB after the load and %v idle", o.pid, mib(p.RSS), o.settle)
	}
	if o.jsonOut != "" {
		data, _ := json.MarshalIndent(rep, "", "  ")
		return os.WriteFile(o.jsonOut, append(data, '\n'), 0o644)
	}
	return nil
}

func sendPhase(ctx context.Context, c *bench.Client, o options, users []*bench.User) (*Phase, error) {
	rooms := make([]string, o.rooms)
	for i := range rooms {
		id, err := c.CreateRoom(ctx, users[0], bench.PublicRoom(fmt.Sprintf("send %d", i)))
		if err != nil {
			return nil, err
		}
		rooms[i] = id
	}
	senders := make([]*bench.User, o.senders)
	for i := range senders {
		senders[i] = users[i%len(users)]
	}
	// Every sender joins the room it sends into.
	if err := bench.Parallel(ctx, len(senders), o.conc, func(ctx context.Context, i int) error {
		if senders[i] == users[0] {
			return nil
		}
		return c.Join(ctx, senders[i], rooms[i%len(rooms)])
	}); err != nil {
		return nil, fmt.Errorf("join the send rooms: %w", err)
	}
	if o.warmup > 0 {
		bench.SendLoad(ctx, c, senders, rooms, o.warmup)
	}
	ph, err := measure(o, "send", func() bench.Result { return bench.SendLoad(ctx, c, senders, rooms, o.duration) })
	if err != nil {
		return nil, err
	}
	ph.Concurrency, ph.Rooms = o.senders, o.rooms
	logf("send: %d senders into %d rooms for %v: %d events, %.1f events/s, %s%s", o.senders, o.rooms, o.duration,
		ph.Result.Ops, ph.PerSecond, ph.Result.Latency, cpuNote(ph, "event"))
	return ph, nil
}

func joinPhase(ctx context.Context, c *bench.Client, o options, owner *bench.User) ([]bench.JoinPoint, error) {
	biggest := o.members[len(o.members)-1]
	start := time.Now()
	members, err := bench.RegisterUsers(ctx, c, o.prefix+"m", max(0, biggest-2), o.conc)
	if err != nil {
		return nil, fmt.Errorf("register members: %w", err)
	}
	joiners, err := bench.RegisterUsers(ctx, c, o.prefix+"j", len(o.members)*o.samples, o.conc)
	if err != nil {
		return nil, fmt.Errorf("register joiners: %w", err)
	}
	logf("join: registered %d users in %v", len(members)+len(joiners), time.Since(start).Round(time.Millisecond))
	roomID, err := c.CreateRoom(ctx, owner, bench.PublicRoom("join"))
	if err != nil {
		return nil, err
	}
	// Each measured join starts on an idle server (with -pid), as its
	// background work for earlier joins would otherwise be measured too.
	// After growing the room the server may have minutes of background
	// work queued (a sync stream catching up); between joins, seconds.
	settle := func(grown bool) {
		wait := 20 * time.Second
		if grown {
			wait = 30 * time.Minute
		}
		_, _ = bench.WaitIdle(o.pid, wait)
	}
	if o.pid == 0 {
		settle = func(bool) { time.Sleep(time.Second) }
	}
	pts, err := bench.JoinSeries(ctx, c, owner, roomID, members, joiners, o.members, o.samples, o.conc,
		settle, func(s string) { logf("join: %s", s) })
	for _, p := range pts {
		logf("join: member %d: join %s; leave p50=%.2fms", p.Members, p.Join, float64(p.Leave.P50)/1e6)
	}
	if len(pts) > 1 {
		first, last := pts[0], pts[len(pts)-1]
		logf("join: member %d / member %d: p50 %.2fx, mean %.2fx", last.Members, first.Members,
			float64(last.Join.P50)/float64(first.Join.P50), float64(last.Join.Mean)/float64(first.Join.Mean))
	}
	return pts, err
}

// measure runs a phase, reading the server's CPU time around it: from
// when the server is idle before the phase until it is idle again after,
// so that work the server does in the background for the phase's
// requests (sync streams, indexing) is counted too.
func measure(o options, name string, fn func() bench.Result) (*Phase, error) {
	var before bench.Proc
	if o.pid != 0 {
		var err error
		if before, err = bench.WaitIdle(o.pid, time.Minute); err != nil {
			return nil, err
		}
	}
	res := fn()
	ph := &Phase{Result: res, PerSecond: res.Rate()}
	if o.pid != 0 {
		after, err := bench.WaitIdle(o.pid, time.Minute)
		if err != nil {
			return nil, err
		}
		ph.ServerCPU = after.CPU - before.CPU
		if res.Ops > 0 {
			ph.CPUPerOp = ph.ServerCPU / time.Duration(res.Ops)
		}
	}
	if res.Errors > 0 {
		logf("%s: %d errors, for example: %v", name, res.Errors, res.FirstError)
	}
	if res.Ops == 0 {
		return nil, fmt.Errorf("%s: nothing succeeded: %v", name, res.FirstError)
	}
	return ph, nil
}

func cpuNote(ph *Phase, unit string) string {
	if ph.ServerCPU == 0 {
		return ""
	}
	return fmt.Sprintf("; server CPU %.2fs, %.2f ms/%s (%.0f%% of a core)", ph.ServerCPU.Seconds(),
		float64(ph.CPUPerOp)/1e6, unit, 100*ph.ServerCPU.Seconds()/ph.Result.Elapsed.Seconds())
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// compare prints two reports side by side with the ratios b/a.
func compare(pathA, pathB string) error {
	var reps [2]Report
	for i, p := range []string{pathA, pathB} {
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(data, &reps[i]); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	a, b := reps[0], reps[1]
	fmt.Printf("%-34s %14s %14s %9s\n", "", "a", "b", "b/a")
	row := func(name string, x, y float64, format string) {
		if x == 0 && y == 0 {
			return
		}
		ratio := "-"
		if x != 0 {
			ratio = fmt.Sprintf("%.2f", y/x)
		}
		fmt.Printf("%-34s %14s %14s %9s\n", name, fmt.Sprintf(format, x), fmt.Sprintf(format, y), ratio)
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	phase := func(name, unit string, x, y *Phase) {
		if x == nil || y == nil {
			return
		}
		row(name+" "+unit+"/s", x.PerSecond, y.PerSecond, "%.1f")
		row(name+" server CPU ms/"+unit, ms(x.CPUPerOp), ms(y.CPUPerOp), "%.2f")
		row(name+" latency p50 ms", ms(x.Result.Latency.P50), ms(y.Result.Latency.P50), "%.2f")
		row(name+" latency p99 ms", ms(x.Result.Latency.P99), ms(y.Result.Latency.P99), "%.2f")
	}
	phase("create", "room", a.Create, b.Create)
	phase("send", "event", a.Send, b.Send)
	for _, pa := range a.Join {
		for _, pb := range b.Join {
			if pa.Members == pb.Members {
				row(fmt.Sprintf("join making member %d p50 ms", pa.Members), ms(pa.Join.P50), ms(pb.Join.P50), "%.2f")
			}
		}
	}
	growth := func(pts []bench.JoinPoint) float64 {
		if len(pts) < 2 || pts[0].Join.P50 == 0 {
			return 0
		}
		return float64(pts[len(pts)-1].Join.P50) / float64(pts[0].Join.P50)
	}
	row("join p50 last size / first size", growth(a.Join), growth(b.Join), "%.2f")
	if x, y := a.Sync, b.Sync; x != nil && y != nil {
		stats := func(name string, sx, sy bench.Stats) {
			row(name+" p50 ms", ms(sx.P50), ms(sy.P50), "%.2f")
			row(name+" p99 ms", ms(sx.P99), ms(sy.P99), "%.2f")
		}
		stats("sync delivery (PUT start→/sync)", x.Delivery, y.Delivery)
		stats("sync delivery: PUT /send alone", x.DeliverySend, y.DeliverySend)
		stats(fmt.Sprintf("initial /sync %d rooms×%d", y.Rooms, y.PerRoom), x.Initial, y.Initial)
		stats("incremental /sync, nothing new", x.IncrementalEmpty, y.IncrementalEmpty)
		stats("incremental /sync, one event", x.IncrementalOne, y.IncrementalOne)
		stats(fmt.Sprintf("/messages page of %d", y.PageSize), x.MessagesPage, y.MessagesPage)
		row("RSS before long-polls MiB", mib(x.RSSBeforePolls), mib(y.RSSBeforePolls), "%.1f")
		row(fmt.Sprintf("RSS with %d long-polls MiB", y.LongPolls), mib(x.RSSHeld), mib(y.RSSHeld), "%.1f")
		row("RSS cost of the long-polls MiB", mib(x.RSSHeld-x.RSSBeforePolls), mib(y.RSSHeld-y.RSSBeforePolls), "%.1f")
	}
	row("RSS at start MiB", mib(a.RSSStart), mib(b.RSSStart), "%.1f")
	row("RSS after load MiB", mib(a.RSSEnd), mib(b.RSSEnd), "%.1f")
	return nil
}
