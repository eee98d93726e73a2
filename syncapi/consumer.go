package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"sync/atomic"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/streamconsumer"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// consumerName is this consumer's row in syncapi_consumer.
const consumerName = "roomserver_output"

// Roomserver is what the sync API needs from the roomserver.
type Roomserver interface {
	OutputSince(ctx context.Context, position int64, limit int) ([]rsapi.OutputEvent, error)
	Notify(position int64) <-chan struct{}
	LatestPosition(ctx context.Context) (int64, error)
	// Event fetches events the stream named but did not carry (state that
	// entered the room through a fork) and redacted events' new form.
	Event(ctx context.Context, eventID string) (*rsapi.Event, error)
	// VisibleEvents applies the history visibility rules for a user.
	VisibleEvents(ctx context.Context, userID string, events []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error)
}

// consumer copies the roomserver's output stream into the sync API's
// tables, remembering how far it got, so a restart resumes there.
type consumer struct {
	db       *storage.DB
	rs       Roomserver
	notifier *notifier
	pos      atomic.Int64
	log      *logrus.Entry
	// push records notifications as events are stored; nil without WithPush.
	push *pushEvaluator
	// members mirrors each room's joined local users (members.go).
	members *localMembers
	// latest is each room's newest event position (roompositions.go).
	latest *roomPositions
	// progress follows pos for CaughtUp's waiters (caughtup.go).
	progress *streamconsumer.Progress
}

func newConsumer(ctx context.Context, db *storage.DB, serverName string, rs Roomserver, n *notifier) (*consumer, error) {
	c := &consumer{db: db, rs: rs, notifier: n, members: newLocalMembers(db, serverName), latest: newRoomPositions(),
		log: logrus.WithField("component", "syncapi.consumer")}
	var pos int64
	err := db.Reader().QueryRowContext(ctx, sqlConsumerPos, consumerName).Scan(&pos)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	c.pos.Store(pos)
	c.progress = streamconsumer.NewProgress(pos)
	return c, nil
}

// run consumes until ctx ends.
func (c *consumer) run(ctx context.Context) {
	streamconsumer.Loop(ctx, c.step, func() <-chan struct{} { return c.rs.Notify(c.pos.Load()) }, c.log, "consuming room events")
}

// streamPos is the newest position whose events the sync API has stored,
// as /sync reads it: endpoints that bound their reads by it agree with
// /sync's tokens. (The consumer's in-memory position moves just after
// the commit, so a client could see an event in /sync a moment before it.)
func (s *SyncAPI) streamPos(ctx context.Context) (int64, error) {
	var pos int64
	err := s.db.Reader().QueryRowContext(ctx, sqlConsumerPos, consumerName).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return pos, err
}

// step consumes one batch and returns how many events it took.
func (c *consumer) step(ctx context.Context) (int, error) {
	batch, err := c.rs.OutputSince(ctx, c.pos.Load(), 100)
	if err != nil || len(batch) == 0 {
		return 0, err
	}
	woken := map[string]bool{}
	for _, out := range batch {
		users, err := c.consume(ctx, out)
		if err != nil {
			return 0, err
		}
		for _, u := range users {
			woken[u] = true
		}
		c.pos.Store(out.Position)
		c.progress.Set(out.Position)
	}
	for u := range woken {
		c.notifier.wake(u)
	}
	c.wakePushGateway() // pushgateway.go: the batch may have recorded notifications
	return len(batch), nil
}

// consume stores one output event and returns the users to wake: the
// room's joined members, and whoever a membership event is about.
func (c *consumer) consume(ctx context.Context, out rsapi.OutputEvent) ([]string, error) {
	ev := out.Event
	// Before any sync can see the event.
	c.latest.advance(out.RoomID, out.Position, len(out.AddsState) > 0 || len(out.RemovesState) > 0)
	err := c.db.WithTx(ctx, func(tx *sql.Tx) error {
		adds, _ := json.Marshal(nonNil(out.AddsState))
		removes, _ := json.Marshal(nonNil(out.RemovesState))
		if _, err := tx.ExecContext(ctx, sqlInsertEvent, ev.EventID(), out.Position, out.RoomID, ev.Type(),
			string(ev.SenderID()), ev.StateKey(), membershipOf(ev), string(ev.Version()), string(ev.JSON()),
			out.TxnID, out.DeviceID, string(adds), string(removes)); err != nil {
			return err
		}
		for _, id := range out.RemovesState {
			if err := c.removeState(ctx, tx, id); err != nil {
				return err
			}
		}
		for _, id := range out.AddsState {
			if err := c.addState(ctx, tx, out.RoomID, id, out.Position); err != nil {
				return err
			}
		}
		// Relations (relations_storage.go): index this event's parent,
		// and break the relation of an event this one redacts.
		if err := indexRelation(ctx, tx, out.Position, out.RoomID, ev); err != nil {
			return err
		}
		if ev.Type() == spec.MRoomRedaction {
			if err := c.refresh(ctx, tx, ev.Redacts()); err != nil {
				return err
			}
			if err := unindexRedacted(ctx, tx, ev.Redacts()); err != nil {
				return err
			}
		}
		// Push rules (push.go): record the notifications this event makes
		// for the room's local users, in this transaction, so that unread
		// counts change in the same sync as the event arrives.
		if err := c.recordNotifications(ctx, tx, out); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, sqlSetConsumerPos, consumerName, out.Position)
		return err
	})
	if err != nil {
		return nil, err
	}
	c.members.applied(out)
	users, err := c.joinedUsers(ctx, out.RoomID)
	if err != nil {
		return nil, err
	}
	if ev.Type() == spec.MRoomMember && ev.StateKey() != nil {
		users = append(users, *ev.StateKey())
	}
	return users, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func membershipOf(ev gomatrixserverlib.PDU) *string {
	if ev.Type() != spec.MRoomMember {
		return nil
	}
	m, err := ev.Membership()
	if err != nil {
		return nil
	}
	return &m
}

// addState makes an event part of the current state, fetching it from
// the roomserver when the stream never carried it.
func (c *consumer) addState(ctx context.Context, tx *sql.Tx, roomID, eventID string, pos int64) error {
	var one int
	err := tx.QueryRowContext(ctx, sqlKnownEvent, eventID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		got, err := c.rs.Event(ctx, eventID)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, sqlInsertStateOnlyEvent, eventID, roomID, got.Type(), string(got.SenderID()),
			got.StateKey(), membershipOf(got), string(got.Version()), string(got.JSON())); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	var evType string
	var stateKey sql.NullString
	if err := tx.QueryRowContext(ctx, sqlEventKeys, eventID).Scan(new(string), &evType, &stateKey); err != nil {
		return err
	}
	if !stateKey.Valid {
		return nil
	}
	var membership sql.NullString
	if evType == spec.MRoomMember {
		if err := tx.QueryRowContext(ctx, `SELECT membership FROM syncapi_events WHERE event_id = $1`, eventID).Scan(&membership); err != nil {
			return err
		}
	}
	_, err = tx.ExecContext(ctx, sqlUpsertState, roomID, evType, stateKey.String, eventID, membership, pos)
	return err
}

func (c *consumer) removeState(ctx context.Context, tx *sql.Tx, eventID string) error {
	var roomID, evType string
	var stateKey sql.NullString
	err := tx.QueryRowContext(ctx, `SELECT room_id, type, state_key FROM syncapi_events WHERE event_id = $1`, eventID).
		Scan(&roomID, &evType, &stateKey)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !stateKey.Valid) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, sqlDeleteState, roomID, evType, stateKey.String, eventID)
	return err
}

// refresh replaces our copy of a redacted event with the roomserver's.
func (c *consumer) refresh(ctx context.Context, tx *sql.Tx, eventID string) error {
	got, err := c.rs.Event(ctx, eventID)
	if errors.Is(err, rsapi.ErrEventNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, sqlUpdateEventJSON, eventID, string(got.JSON()))
	return err
}

// joinedUsers returns the room's joined local users: the ones whose
// syncs an event in the room wakes.
func (c *consumer) joinedUsers(ctx context.Context, roomID string) ([]string, error) {
	return c.members.joined(ctx, roomID)
}
