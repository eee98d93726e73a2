// Package roomserver keeps every room's signed event graph and its state.
// It is the one writer of room history: events enter through one input
// path, are checked against the auth rules, stored with the state before
// and after them, and appended to an ordered output stream. See README.md.
package roomserver

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
	"github.com/plexus-chat/plexus/storage"
)

// Roomserver implements api.RoomserverAPI.
type Roomserver struct {
	db         *storage.DB
	state      *state.Store
	serverName spec.ServerName
	keyID      gomatrixserverlib.KeyID
	privateKey ed25519.PrivateKey

	// roomLocks serialise input per room; rooms proceed in parallel.
	roomLocks sync.Map // room ID -> *sync.Mutex

	stream *outputStream
	recent *recentOutputs // the newest committed stream entries

	// createMu guards lastCreateMS, the timestamp of the last create event.
	createMu     sync.Mutex
	lastCreateMS int64
}

var _ api.RoomserverAPI = (*Roomserver)(nil)

// New opens the roomserver's storage.
func New(ctx context.Context, db *storage.DB, serverName spec.ServerName, keyID string, key ed25519.PrivateKey) (*Roomserver, error) {
	st, err := state.New(ctx, db)
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	stream, err := newOutputStream(ctx, db)
	if err != nil {
		return nil, err
	}
	return &Roomserver{
		db: db, state: st, serverName: serverName,
		keyID: gomatrixserverlib.KeyID(keyID), privateKey: key,
		stream: stream, recent: newRecentOutputs(stream.latest()),
	}, nil
}

func (r *Roomserver) lockRoom(roomID string) func() {
	m, _ := r.roomLocks.LoadOrStore(roomID, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// userIDForSender maps sender IDs to user IDs: they are the same in every
// room version this server supports (no pseudonymous IDs).
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// room is a room's row.
type room struct {
	nid      int64
	id       string
	version  gomatrixserverlib.RoomVersion
	verImpl  gomatrixserverlib.IRoomVersion
	snapshot state.SnapshotNID
}

func (r *Roomserver) loadRoom(ctx context.Context, q storage.Querier, roomID string) (*room, error) {
	rm := &room{id: roomID}
	var version string
	var snap int64
	err := q.QueryRowContext(ctx, sqlSelectRoom, roomID).Scan(&rm.nid, &version, &snap)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, api.ErrRoomNotFound
	}
	if err != nil {
		return nil, err
	}
	rm.version = gomatrixserverlib.RoomVersion(version)
	rm.verImpl, err = gomatrixserverlib.GetRoomVersion(rm.version)
	if err != nil {
		return nil, fmt.Errorf("room %s has unknown version %q", roomID, version)
	}
	rm.snapshot = state.SnapshotNID(snap)
	return rm, nil
}

// storedEvent is an event row.
type storedEvent struct {
	nid         int64
	pdu         gomatrixserverlib.PDU
	depth       int64
	status      int
	before      state.SnapshotNID
	after       state.SnapshotNID
	position    int64
	roomVersion gomatrixserverlib.RoomVersion
}

type scanner interface{ Scan(dest ...any) error }

func scanEvent(row scanner) (*storedEvent, error) {
	var (
		ev                   storedEvent
		eventID, roomID, ver string
		before, after        int64
		redacted             bool
		eventJSON            string
	)
	if err := row.Scan(&ev.nid, &eventID, &roomID, &ver, &ev.depth, &ev.status, &before, &after, &ev.position, &redacted, &eventJSON); err != nil {
		return nil, err
	}
	ev.before, ev.after = state.SnapshotNID(before), state.SnapshotNID(after)
	ev.roomVersion = gomatrixserverlib.RoomVersion(ver)
	var err error
	ev.pdu, err = parsedPDUs.Parse(ver, eventID, eventJSON, redacted)
	return &ev, err
}

func (r *Roomserver) eventByID(ctx context.Context, q storage.Querier, eventID string) (*storedEvent, error) {
	ev, err := scanEvent(q.QueryRowContext(ctx, sqlSelectEventByID, eventID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, api.ErrEventNotFound
	}
	return ev, err
}

func (r *Roomserver) eventByNID(ctx context.Context, q storage.Querier, nid int64) (*storedEvent, error) {
	ev, err := scanEvent(q.QueryRowContext(ctx, sqlSelectEventByNID, nid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, api.ErrEventNotFound
	}
	return ev, err
}

// eventsIn runs query (a SELECT of sqlEventColumns ending in "IN (")
// over keys, 500 a statement, and hands each stored event to each.
func eventsIn(ctx context.Context, q storage.Querier, query string, keys []any, each func(*storedEvent)) error {
	const chunk = 500
	for start := 0; start < len(keys); start += chunk {
		part := keys[start:min(start+chunk, len(keys))]
		rows, err := q.QueryContext(ctx, query+storage.Placeholders(1, len(part))+")", part...)
		if err != nil {
			return err
		}
		for rows.Next() {
			ev, err := scanEvent(rows)
			if err != nil {
				rows.Close()
				return err
			}
			each(ev)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// eventsByNID loads events by numeric ID in bulk, in the order given.
func (r *Roomserver) eventsByNID(ctx context.Context, q storage.Querier, nids []int64) ([]gomatrixserverlib.PDU, error) {
	keys := make([]any, len(nids))
	for i, nid := range nids {
		keys[i] = nid
	}
	byNID := make(map[int64]gomatrixserverlib.PDU, len(nids))
	if err := eventsIn(ctx, q, sqlSelectEventsByNIDPrefix, keys, func(ev *storedEvent) { byNID[ev.nid] = ev.pdu }); err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.PDU, 0, len(nids))
	for _, nid := range nids {
		pdu, ok := byNID[nid]
		if !ok {
			return nil, fmt.Errorf("state names missing event %d", nid)
		}
		out = append(out, pdu)
	}
	return out, nil
}
