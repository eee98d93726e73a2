package syncapi

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/streamconsumer"
	"github.com/plexus-chat/plexus/storage"
)

// Delivery of notifications to push gateways (the Push Gateway API's
// POST /_matrix/push/v1/notify). The notifications push rules record
// (push.go) are read in stream order from a stored position of this
// sender's own; each one goes to each "http" pusher of its user, through
// one queue per pusher (pushgateway_deliver.go), so that a slow or dead
// gateway delays only its own pushers. The stored position is the lowest
// notification not yet delivered or given up, so a restart sends again
// what was in flight (at least once; gateways drop duplicates by
// event_id) and loses nothing. The consumer wakes the sender after each
// batch of events it stores; nothing polls.

const pushGatewayComponent = "syncapi_pushgateway"

var pushGatewayMigrations = []storage.Migration{{
	Version: 1,
	// A server that had notifications before the sender existed starts
	// after them, rather than pushing its whole history.
	SQL: `
CREATE TABLE syncapi_push_gateway_position (
	id INT NOT NULL PRIMARY KEY,
	pos BIGINT NOT NULL
);
INSERT INTO syncapi_push_gateway_position (id, pos) SELECT 1, COALESCE(MAX(pos), 0) FROM syncapi_notifications;
CREATE INDEX syncapi_notifications_pos ON syncapi_notifications (pos);`,
}}

const (
	sqlPushGatewayPos    = `SELECT pos FROM syncapi_push_gateway_position WHERE id = 1`
	sqlSetPushGatewayPos = `UPDATE syncapi_push_gateway_position SET pos = $1 WHERE id = 1`
	// The end of the next batch: at most $2 distinct positions, so that
	// every notification of an event is in one batch.
	sqlPushBatchEnd = `SELECT MAX(pos) FROM (SELECT DISTINCT pos FROM syncapi_notifications WHERE pos > $1
		ORDER BY pos LIMIT $2) AS batch`
	// Only the notifications of users with an http pusher: most users
	// have none, and cost one index probe here instead of a query each.
	sqlPushBatch = `SELECT n.user_id, n.pos, n.room_id, n.event_id, n.thread_id, n.highlight, n.actions, n.ts
		FROM syncapi_notifications n WHERE n.pos > $1 AND n.pos <= $2
		AND EXISTS (SELECT 1 FROM syncapi_pushers p WHERE p.user_id = n.user_id AND p.kind = 'http')
		ORDER BY n.pos, n.user_id`
)

// Limits of the sender.
const (
	pushBatchPositions = 50
	// maxPushInFlight bounds the deliveries queued in memory; past it the
	// sender reads no further until some finish.
	maxPushInFlight = 10000
	// maxPusherQueue bounds one pusher's queue: a gateway that is down
	// loses its oldest waiting notifications rather than memory.
	maxPusherQueue = 100
	// pushRequestTimeout bounds one request to a gateway.
	pushRequestTimeout = 10 * time.Second
	pushMinBackoff     = time.Second
	pushMaxBackoff     = 5 * time.Minute
	// DefaultPushRetryFor is how long a notification is retried when no
	// other duration is configured.
	DefaultPushRetryFor = time.Hour
)

// PushGatewayConfig configures delivery to push gateways.
type PushGatewayConfig struct {
	// TLS is the client configuration for https gateways; nil trusts the
	// system's CAs.
	TLS *tls.Config
	// RetryFor is how long after it was recorded a notification is
	// retried before it is given up; 0 is DefaultPushRetryFor.
	RetryFor time.Duration
}

// WithPushGateway sends notifications to the users' http pushers. It
// needs WithPush, given before it.
func WithPushGateway(cfg PushGatewayConfig) Option {
	return func(s *SyncAPI) {
		if s.consumer.push == nil {
			WithPush()(s)
		}
		if cfg.RetryFor <= 0 {
			cfg.RetryFor = DefaultPushRetryFor
		}
		s.consumer.push.gateway = newPushGateway(s.db, cfg)
	}
}

func (s *SyncAPI) pushGateway() *pushGateway {
	if s.consumer.push == nil {
		return nil
	}
	return s.consumer.push.gateway
}

// migratePushGateway creates the sender's tables (New calls it after the
// sync API's own migrations, which make syncapi_notifications).
func (s *SyncAPI) migratePushGateway(ctx context.Context) error {
	if s.pushGateway() == nil {
		return nil
	}
	return s.db.Migrate(ctx, pushGatewayComponent, pushGatewayMigrations)
}

// startPushGateway starts the sender until ctx ends (Start calls it).
func (s *SyncAPI) startPushGateway(ctx context.Context) {
	if g := s.pushGateway(); g != nil {
		g.start(ctx)
	}
}

// Wait waits for the background work Start began that outlives the
// context's end by a moment (the push gateway sender), so that the
// database can be closed after it.
func (s *SyncAPI) Wait() {
	if g := s.pushGateway(); g != nil {
		g.wg.Wait()
	}
}

// wakePushGateway tells the sender that notifications may have been
// recorded (the consumer calls it after each batch it stored).
func (c *consumer) wakePushGateway() {
	if c.push != nil && c.push.gateway != nil {
		c.push.gateway.wake()
	}
}

type pushGateway struct {
	db       *storage.DB
	client   *http.Client
	retryFor time.Duration
	log      *logrus.Entry
	wakeCh   chan struct{}
	progress chan struct{}
	wg       sync.WaitGroup
	now      func() time.Time
	// ctx is Start's: the pushers' goroutines end with it.
	ctx context.Context

	mu sync.Mutex
	// read is the position read up to; stored the one in the database.
	read, stored int64
	// pending are the positions read whose deliveries are not all
	// finished, in order, with how many are left.
	pending  []pendingPush
	inFlight int
	workers  map[pusherKey]*pusherWorker
	// badgeUsers wait for a badge update; lastBadge is the count each
	// user's devices were last sent (pushgateway_badge.go).
	// (with when their receipt moved: pushers set up later get nothing).
	badgeUsers map[string]int64
	lastBadge  map[string]int
}

func newPushGateway(db *storage.DB, cfg PushGatewayConfig) *pushGateway {
	dialer := &net.Dialer{Timeout: pushRequestTimeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     cfg.TLS,
		TLSHandshakeTimeout: pushRequestTimeout,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &pushGateway{
		db: db,
		client: &http.Client{Transport: transport,
			// A gateway's URL is its notify endpoint; a redirect is a failure.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		retryFor:   cfg.RetryFor,
		log:        logrus.WithField("component", "syncapi.pushgateway"),
		wakeCh:     make(chan struct{}, 1),
		progress:   make(chan struct{}, 1),
		now:        time.Now,
		workers:    map[pusherKey]*pusherWorker{},
		badgeUsers: map[string]int64{},
		lastBadge:  map[string]int{},
	}
}

func (g *pushGateway) wake() {
	select {
	case g.wakeCh <- struct{}{}:
	default:
	}
}

func (g *pushGateway) start(ctx context.Context) {
	g.ctx = ctx
	g.wg.Add(1)
	go g.run(ctx)
}

// run reads and dispatches notifications until ctx ends.
func (g *pushGateway) run(ctx context.Context) {
	defer g.wg.Done()
	var pos int64
	for {
		err := g.db.Reader().QueryRowContext(ctx, sqlPushGatewayPos).Scan(&pos)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		g.log.WithError(err).Error("cannot read the push gateway position; retrying")
		if !sleepCtx(ctx, time.Second) {
			return
		}
	}
	g.mu.Lock()
	g.read, g.stored = pos, pos
	g.mu.Unlock()
	for {
		n := 0
		if g.room() {
			var err error
			n, err = g.dispatchBatch(ctx)
			if err == nil {
				err = g.sendBadges(ctx)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				g.log.WithError(err).Error("reading notifications to push failed; retrying")
				if !sleepCtx(ctx, time.Second) {
					return
				}
				continue
			}
		}
		g.persist(ctx)
		if n > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-g.wakeCh:
			// Badge updates go at once: they follow receipts, and a late
			// one could reach pushers set up after the receipt.
			// Notifications wait a moment: a burst's gather, and the
			// sender keeps off the CPU while the event that woke it
			// reaches the syncs waiting for it.
			if err := g.sendBadges(ctx); err != nil && ctx.Err() == nil {
				g.log.WithError(err).Warn("reading badge counts failed; retrying with the next notifications")
			}
			if !sleepCtx(ctx, streamconsumer.Gather) {
				return
			}
		case <-g.progress:
		}
	}
}

// room says whether fewer deliveries than the bound are in flight.
func (g *pushGateway) room() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inFlight < maxPushInFlight
}

// pushNotification is one row of syncapi_notifications.
type pushNotification struct {
	userID, roomID, eventID, threadID string
	pos, ts                           int64
	highlight                         bool
	actions                           string
}

// dispatchBatch reads the next batch of notifications and queues their
// deliveries; it returns 0 when there was none.
func (g *pushGateway) dispatchBatch(ctx context.Context) (int, error) {
	g.mu.Lock()
	from := g.read
	g.mu.Unlock()
	var end sql.NullInt64
	if err := g.db.Reader().QueryRowContext(ctx, sqlPushBatchEnd, from, pushBatchPositions).Scan(&end); err != nil {
		return 0, err
	}
	if !end.Valid {
		return 0, nil
	}
	rows, err := g.db.Reader().QueryContext(ctx, sqlPushBatch, from, end.Int64)
	if err != nil {
		return 0, err
	}
	batch := []pushNotification{}
	for rows.Next() {
		var n pushNotification
		if err := rows.Scan(&n.userID, &n.pos, &n.roomID, &n.eventID, &n.threadID, &n.highlight, &n.actions, &n.ts); err != nil {
			rows.Close()
			return 0, err
		}
		batch = append(batch, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	events := map[string]*pushEventInfo{}
	var jobs []*pushJob
	for i, n := range batch {
		js, err := g.prepare(ctx, n, events)
		if err != nil {
			return 0, err
		}
		jobs = append(jobs, js...)
		// A position's deliveries are queued together once all its
		// notifications are prepared, so that a failure above leaves
		// nothing half-queued to be read again.
		if i == len(batch)-1 || batch[i+1].pos != n.pos {
			g.queue(n.pos, jobs)
			jobs = nil
		}
	}
	// The batch's other positions had no one with a pusher.
	g.mu.Lock()
	g.read = max(g.read, end.Int64)
	g.mu.Unlock()
	return len(batch) + 1, nil
}

// sleepCtx waits d or until ctx ends; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

var errPusherGone = errors.New("pusher removed")
