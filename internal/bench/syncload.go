package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// SyncConfig says what the sync mode measures and how often.
type SyncConfig struct {
	// Prefix names the users the mode registers.
	Prefix string
	// Rooms and PerRoom: the syncing user is in Rooms rooms with PerRoom
	// messages each (the initial sync's load).
	Rooms, PerRoom int
	// Deliveries, Incremental and Initial are the samples of the delivery
	// latency, of each kind of incremental sync and of the initial sync.
	Deliveries, Incremental, Initial int
	// HistoryEvents messages in one room are read backwards in pages of
	// PageSize, Passes times.
	HistoryEvents, PageSize, Passes int
	// LongPolls users hold a /sync long-poll at once for the memory reading
	// (0: skip), each with LongPollTimeout.
	LongPolls       int
	LongPollTimeout time.Duration
	// Conc is the concurrency of the (untimed) setup.
	Conc int
	// PID, when not 0, is the server's process: the mode waits for it to
	// be idle between phases and reads its memory around the long-polls.
	PID int
	Log func(format string, args ...any)
}

// DefaultSyncConfig is the load of issue 4's targets.
func DefaultSyncConfig() SyncConfig {
	return SyncConfig{Rooms: 50, PerRoom: 20, Deliveries: 200, Incremental: 200, Initial: 20,
		HistoryEvents: 2000, PageSize: 50, Passes: 3, LongPolls: 1000, LongPollTimeout: 2 * time.Minute, Conc: 8}
}

// SyncReport is what the sync mode measured.
type SyncReport struct {
	Rooms   int `json:"rooms"`
	PerRoom int `json:"per_room"`
	// Delivery: from just before PUT /send until the receiver's waiting
	// /sync long-poll has returned the event. DeliverySend: the PUT alone.
	Delivery     Stats `json:"delivery"`
	DeliverySend Stats `json:"delivery_send"`
	// DeliveryEarlyWakes counts long-polls that returned without the event
	// (and were polled again).
	DeliveryEarlyWakes int `json:"delivery_early_wakes"`
	// Initial: /sync without since, timeline limit PerRoom.
	Initial       Stats `json:"initial"`
	InitialBytes  int   `json:"initial_bytes"`
	InitialEvents int   `json:"initial_events"`
	// IncrementalEmpty and IncrementalOne: /sync with since and timeout=0,
	// nothing new and one new message.
	IncrementalEmpty Stats `json:"incremental_empty"`
	IncrementalOne   Stats `json:"incremental_one"`
	// MessagesPage: one /messages page of PageSize, backwards.
	MessagesPage      Stats `json:"messages_page"`
	HistoryEvents     int   `json:"history_events"`
	PageSize          int   `json:"page_size"`
	HistoryEventsRead int   `json:"history_events_read"`
	// LongPolls were held at once; RSSBeforePolls is the server's memory
	// before they started, RSSHeld while all were waiting.
	LongPolls      int   `json:"long_polls,omitempty"`
	LongPollWakes  int   `json:"long_poll_early_wakes,omitempty"`
	RSSBeforePolls int64 `json:"rss_before_polls_bytes,omitempty"`
	RSSHeld        int64 `json:"rss_polls_held_bytes,omitempty"`
}

// syncFilter makes both servers return the same timeline length (their
// defaults differ), as a client's filter would.
func syncFilter(limit int) string {
	return fmt.Sprintf(`{"room":{"timeline":{"limit":%d}}}`, limit)
}

// RunSync sets up rooms and users (untimed) and measures the sync API.
func RunSync(ctx context.Context, c *Client, cfg SyncConfig) (*SyncReport, error) {
	logf := cfg.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	idle := func() {
		if cfg.PID != 0 {
			_, _ = WaitIdle(cfg.PID, 2*time.Minute)
		} else {
			time.Sleep(time.Second)
		}
	}
	rep := &SyncReport{Rooms: cfg.Rooms, PerRoom: cfg.PerRoom, HistoryEvents: cfg.HistoryEvents, PageSize: cfg.PageSize}

	// Setup: a sender, a syncing user in Rooms rooms, a history reader.
	start := time.Now()
	us, err := RegisterUsers(ctx, c, cfg.Prefix+"y", 3, cfg.Conc)
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	sender, syncer, reader := us[0], us[1], us[2]
	rooms := make([]string, cfg.Rooms)
	if err := Parallel(ctx, cfg.Rooms, cfg.Conc, func(ctx context.Context, i int) error {
		id, err := c.CreateRoom(ctx, sender, PublicRoom(fmt.Sprintf("sync %d", i)))
		if err == nil {
			rooms[i] = id
			err = c.Join(ctx, syncer, id)
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("rooms: %w", err)
	}
	if err := Parallel(ctx, cfg.Rooms*cfg.PerRoom, cfg.Conc, func(ctx context.Context, i int) error {
		_, err := c.SendText(ctx, sender, rooms[i%cfg.Rooms], fmt.Sprintf("message %d", i/cfg.Rooms))
		return err
	}); err != nil {
		return nil, fmt.Errorf("messages: %w", err)
	}
	history, err := c.CreateRoom(ctx, sender, PublicRoom("history"))
	if err == nil {
		err = c.Join(ctx, reader, history)
	}
	if err != nil {
		return nil, fmt.Errorf("history room: %w", err)
	}
	if err := Parallel(ctx, cfg.HistoryEvents, cfg.Conc, func(ctx context.Context, i int) error {
		_, err := c.SendText(ctx, sender, history, fmt.Sprintf("history %d", i))
		return err
	}); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	logf("sync: set up %d rooms × %d messages and %d history events in %v", cfg.Rooms, cfg.PerRoom,
		cfg.HistoryEvents, time.Since(start).Round(time.Millisecond))
	idle()

	filter := syncFilter(cfg.PerRoom)
	// The initial sync, once every message is visible to it.
	var since string
	for deadline := time.Now().Add(5 * time.Minute); ; {
		raw, err := c.SyncRaw(ctx, syncer, SyncParams{Filter: filter})
		if err != nil {
			return nil, fmt.Errorf("initial sync: %w", err)
		}
		s, err := ParseSync(raw)
		if err != nil {
			return nil, fmt.Errorf("initial sync: %w", err)
		}
		if s.JoinedRooms >= cfg.Rooms && s.TimelineEvents >= cfg.Rooms*cfg.PerRoom {
			since, rep.InitialBytes, rep.InitialEvents = s.NextBatch, len(raw), s.TimelineEvents
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("initial sync shows %d rooms and %d events, want %d and %d", s.JoinedRooms,
				s.TimelineEvents, cfg.Rooms, cfg.Rooms*cfg.PerRoom)
		}
		time.Sleep(time.Second)
	}
	var rec Recorder
	for range cfg.Initial {
		if err := rec.Time(func() error {
			_, err := c.SyncRaw(ctx, syncer, SyncParams{Filter: filter})
			return err
		}); err != nil {
			return nil, fmt.Errorf("initial sync: %w", err)
		}
	}
	rep.Initial = rec.Stats()
	logf("sync: initial (%d rooms, %d events, %d bytes): %s", cfg.Rooms, rep.InitialEvents, rep.InitialBytes, rep.Initial)

	if since, err = incrementalEmpty(ctx, c, syncer, since, filter, cfg.Incremental, rep); err != nil {
		return nil, err
	}
	logf("sync: incremental, nothing new: %s", rep.IncrementalEmpty)
	idle()
	if since, err = incrementalOne(ctx, c, sender, syncer, rooms, since, filter, cfg.Incremental, rep); err != nil {
		return nil, err
	}
	logf("sync: incremental, one new event: %s", rep.IncrementalOne)
	idle()
	if err = delivery(ctx, c, sender, syncer, rooms[0], since, filter, cfg.Deliveries, rep); err != nil {
		return nil, err
	}
	logf("sync: delivery, start of PUT /send to the waiting /sync returning it: %s (PUT alone: %s; %d early wakes)",
		rep.Delivery, rep.DeliverySend, rep.DeliveryEarlyWakes)
	idle()
	if err := messagesPages(ctx, c, reader, history, cfg, rep); err != nil {
		return nil, err
	}
	logf("sync: /messages pages of %d over %d events: %s", cfg.PageSize, rep.HistoryEventsRead, rep.MessagesPage)
	if cfg.LongPolls > 0 {
		if err := longPolls(ctx, c, cfg, rep, logf); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func incrementalEmpty(ctx context.Context, c *Client, u *User, since, filter string, n int, rep *SyncReport) (string, error) {
	var rec Recorder
	for range n {
		var raw []byte
		if err := rec.Time(func() (err error) {
			raw, err = c.SyncRaw(ctx, u, SyncParams{Since: since, Filter: filter})
			return err
		}); err != nil {
			return "", fmt.Errorf("incremental sync: %w", err)
		}
		s, err := ParseSync(raw)
		if err != nil {
			return "", err
		}
		since = s.NextBatch
	}
	rep.IncrementalEmpty = rec.Stats()
	return since, nil
}

// incrementalOne times /sync?since=S&timeout=0 where one message has
// arrived after S. The message is first awaited with an untimed long-poll
// from S (servers hand events to their sync stream asynchronously; a
// timed sync that raced it would measure nothing new), then the same
// since is synced again, timed, and must hold it.
func incrementalOne(ctx context.Context, c *Client, sender, u *User, rooms []string, since, filter string, n int, rep *SyncReport) (string, error) {
	var rec Recorder
	for i := range n {
		id, err := c.SendText(ctx, sender, rooms[i%len(rooms)], fmt.Sprintf("incremental %d", i))
		if err != nil {
			return "", err
		}
		for {
			raw, err := c.SyncRaw(ctx, u, SyncParams{Since: since, Filter: filter, Timeout: 30 * time.Second})
			if err != nil {
				return "", err
			}
			if s, err := ParseSync(raw); err != nil {
				return "", err
			} else if s.HasEvent(id) {
				break
			}
		}
		var raw []byte
		if err := rec.Time(func() (err error) {
			raw, err = c.SyncRaw(ctx, u, SyncParams{Since: since, Filter: filter})
			return err
		}); err != nil {
			return "", err
		}
		s, err := ParseSync(raw)
		if err != nil {
			return "", err
		}
		if !s.HasEvent(id) {
			return "", fmt.Errorf("incremental sync %d: the new event %s is missing", i, id)
		}
		since = s.NextBatch
	}
	rep.IncrementalOne = rec.Stats()
	return since, nil
}

// delivery times, n times, from just before PUT /send until the
// receiver's /sync long-poll, already waiting, returns the message.
func delivery(ctx context.Context, c *Client, sender, u *User, room, since, filter string, n int, rep *SyncReport) error {
	var lat, send Recorder
	for i := range n {
		d, err := deliverOnce(ctx, c, sender, u, room, since, filter, fmt.Sprintf("delivery %d %d", i, time.Now().UnixNano()), 50*time.Millisecond)
		if err != nil {
			return err
		}
		lat.Add(d.Latency)
		send.Add(d.Put)
		rep.DeliveryEarlyWakes += d.EarlyWakes
		since = d.Since
	}
	rep.Delivery, rep.DeliverySend = lat.Stats(), send.Stats()
	return nil
}

// Delivery is one measured delivery: from just before the sender's PUT
// until u's waiting /sync returned the event.
type Delivery struct {
	Latency, Put time.Duration
	// Since is u's next_batch after the sync that carried the event.
	Since string
	// EarlyWakes counts long-polls that returned without the event.
	EarlyWakes int
}

// deliverOnce starts u's long-poll from since, waits hold for the server
// to take it in, then sends marker into room as sender and times until
// the long-poll returns with it.
func deliverOnce(ctx context.Context, c *Client, sender, u *User, room, since, filter, marker string, hold time.Duration) (Delivery, error) {
	sent := make(chan struct{})
	type arrival struct {
		at    time.Time
		since string
		wakes int
		err   error
	}
	done := make(chan arrival, 1)
	go func() {
		var once sync.Once
		s, wakes := since, 0
		for {
			raw, err := c.SyncRaw(ctx, u, SyncParams{Since: s, Filter: filter, Timeout: 30 * time.Second,
				Sent: func() { once.Do(func() { close(sent) }) }})
			at := time.Now()
			if err != nil {
				once.Do(func() { close(sent) })
				done <- arrival{err: err}
				return
			}
			sum, err := ParseSync(raw)
			if err != nil {
				done <- arrival{err: err}
				return
			}
			s = sum.NextBatch
			if sum.HasBody(marker) {
				done <- arrival{at: at, since: s, wakes: wakes}
				return
			}
			wakes++
		}
	}()
	<-sent
	// Let the server take the request in and start waiting.
	time.Sleep(hold)
	t0 := time.Now()
	if _, err := c.SendText(ctx, sender, room, marker); err != nil {
		return Delivery{}, fmt.Errorf("delivery send: %w", err)
	}
	put := time.Since(t0)
	a := <-done
	if a.err != nil {
		return Delivery{}, fmt.Errorf("delivery sync: %w", a.err)
	}
	return Delivery{Latency: a.at.Sub(t0), Put: put, Since: a.since, EarlyWakes: a.wakes}, nil
}

// messagesPages reads the history room backwards from the reader's
// newest sync position to its creation, cfg.Passes times, timing each
// page.
func messagesPages(ctx context.Context, c *Client, u *User, room string, cfg SyncConfig, rep *SyncReport) error {
	raw, err := c.SyncRaw(ctx, u, SyncParams{Filter: syncFilter(1)})
	if err != nil {
		return err
	}
	s, err := ParseSync(raw)
	if err != nil {
		return err
	}
	var rec Recorder
	for pass := range cfg.Passes {
		from, read := s.NextBatch, 0
		for pages := 0; ; pages++ {
			if pages > 10*cfg.HistoryEvents/cfg.PageSize+10 {
				return errors.New("/messages: paging does not end")
			}
			var page MessagesPage
			if err := rec.Time(func() (err error) {
				page, err = c.Messages(ctx, u, room, from, cfg.PageSize)
				return err
			}); err != nil {
				return fmt.Errorf("/messages: %w", err)
			}
			read += len(page.Chunk)
			if len(page.Chunk) == 0 || page.End == "" || page.End == from {
				break
			}
			from = page.End
		}
		if read < cfg.HistoryEvents {
			return fmt.Errorf("/messages pass %d read %d events, want at least %d", pass, read, cfg.HistoryEvents)
		}
		rep.HistoryEventsRead = read
	}
	rep.MessagesPage = rec.Stats()
	return nil
}

// RunLongPolls runs only the long-poll memory phase of the sync mode (on
// a server that has done nothing else): quicker to repeat while working on
// the memory of held requests.
func RunLongPolls(ctx context.Context, c *Client, cfg SyncConfig) (*SyncReport, error) {
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	rep := &SyncReport{}
	return rep, longPolls(ctx, c, cfg, rep, cfg.Log)
}

// longPolls registers cfg.LongPolls users, gives each a since token from
// an initial sync, reads the server's memory, then has every user hold a
// /sync long-poll and reads it again once all are waiting.
func longPolls(ctx context.Context, c *Client, cfg SyncConfig, rep *SyncReport, logf func(string, ...any)) error {
	start := time.Now()
	users, err := RegisterUsers(ctx, c, cfg.Prefix+"p", cfg.LongPolls, cfg.Conc)
	if err != nil {
		return fmt.Errorf("register long-pollers: %w", err)
	}
	since := make([]string, len(users))
	if err := Parallel(ctx, len(users), cfg.Conc, func(ctx context.Context, i int) error {
		raw, err := c.SyncRaw(ctx, users[i], SyncParams{})
		if err == nil {
			var s SyncSummary
			s, err = ParseSync(raw)
			since[i] = s.NextBatch
		}
		return err
	}); err != nil {
		return fmt.Errorf("long-pollers' initial sync: %w", err)
	}
	logf("sync: %d long-pollers registered and synced in %v", len(users), time.Since(start).Round(time.Millisecond))
	if cfg.PID != 0 {
		p, err := WaitIdle(cfg.PID, 2*time.Minute)
		if err != nil {
			return err
		}
		rep.RSSBeforePolls = p.RSS
	}
	pollCtx, cancel := context.WithCancel(ctx)
	var wg, sent sync.WaitGroup
	var wakes, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	sent.Add(len(users))
	for i, u := range users {
		wg.Go(func() {
			var once sync.Once
			defer once.Do(sent.Done)
			s := since[i]
			for pollCtx.Err() == nil {
				raw, err := c.SyncRaw(pollCtx, u, SyncParams{Since: s, Timeout: cfg.LongPollTimeout, Sent: func() { once.Do(sent.Done) }})
				if pollCtx.Err() != nil {
					return
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				wakes.Add(1)
				if sum, err := ParseSync(raw); err == nil {
					s = sum.NextBatch
				}
			}
		})
	}
	sent.Wait()
	// Every request is written; the server is holding them once it is idle.
	if cfg.PID != 0 {
		_, _ = WaitIdle(cfg.PID, time.Minute)
		time.Sleep(2 * time.Second)
		p, err := ReadProc(cfg.PID)
		if err == nil {
			rep.RSSHeld = p.RSS
		}
	} else {
		time.Sleep(3 * time.Second)
	}
	cancel()
	wg.Wait()
	rep.LongPolls, rep.LongPollWakes = len(users)-int(failed.Load()), int(wakes.Load())
	logf("sync: %d long-polls held (%d woke early, %d failed): RSS %.1f MiB before, %.1f MiB held (+%.1f MiB)",
		rep.LongPolls, rep.LongPollWakes, failed.Load(), float64(rep.RSSBeforePolls)/(1<<20), float64(rep.RSSHeld)/(1<<20),
		float64(rep.RSSHeld-rep.RSSBeforePolls)/(1<<20))
	if p := firstErr.Load(); p != nil {
		return fmt.Errorf("long-polls: %d failed, for example: %w", failed.Load(), *p)
	}
	return nil
}
