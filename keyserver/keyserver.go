package keyserver

import (
	"context"
	"database/sql"
	"sync"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/mxid"
	"github.com/plexus-chat/plexus/storage"
)

// Accounts is what the key server needs from the accounts component: a
// local user's devices, for their display names, to serve only the keys
// of devices that still exist, and to keep cross-signing keys from
// colliding with device IDs.
type Accounts interface {
	Devices(ctx context.Context, localpart string) ([]accounts.Device, error)
}

// KeyServer implements API.
type KeyServer struct {
	db         *storage.DB
	serverName string
	accounts   Accounts
	remote     RemoteKeys // nil until federation provides it
	stream     *stream
	counts     *countCache // KeyCounts' answers (countcache.go)
}

// Option configures the key server at construction.
type Option func(*KeyServer)

// WithRemoteKeys lets the key server ask other servers for their users'
// keys. Without it, /keys/query and /keys/claim report remote servers in
// failures.
func WithRemoteKeys(r RemoteKeys) Option { return func(k *KeyServer) { k.remote = r } }

var _ API = (*KeyServer)(nil)

// New opens the key server's storage.
func New(ctx context.Context, db *storage.DB, serverName string, accts Accounts, opts ...Option) (*KeyServer, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	var pos int64
	if err := db.Reader().QueryRowContext(ctx, sqlStreamPos, streamDeviceList).Scan(&pos); err != nil {
		return nil, err
	}
	k := &KeyServer{db: db, serverName: serverName, accounts: accts, stream: newStream(pos), counts: newCountCache()}
	for _, o := range opts {
		o(k)
	}
	return k, nil
}

// Counters in keyserver_streams.
const (
	streamDeviceList = "device_list"
	streamOTKUpload  = "otk_upload"
)

// stream tells waiters about new device list positions. Positions are
// taken from a counter row inside the transaction that writes the change,
// so they commit in order; the stream only learns of a position after its
// transaction committed, so a reader never sees a position whose change
// it cannot read.
type stream struct {
	mu      sync.Mutex
	latest  int64
	waiters chan struct{}
}

func newStream(pos int64) *stream { return &stream{latest: pos, waiters: make(chan struct{})} }

func (s *stream) advance(pos int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos > s.latest {
		s.latest = pos
		close(s.waiters)
		s.waiters = make(chan struct{})
	}
}

func (s *stream) position() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest
}

func (s *stream) notify(pos int64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.latest > pos {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return s.waiters
}

// DeviceListPosition is the newest committed position.
func (k *KeyServer) DeviceListPosition() int64 { return k.stream.position() }

// DeviceListNotify returns a channel closed once the stream is past pos.
func (k *KeyServer) DeviceListNotify(pos int64) <-chan struct{} { return k.stream.notify(pos) }

// changes collects the device list changes of one transaction; commit
// publishes them once it has committed.
type changes struct {
	k    *KeyServer
	last int64
}

// record appends a change of userID's device list in tx.
func (c *changes) record(ctx context.Context, tx *sql.Tx, userID, deviceID string, deleted bool) error {
	var pos int64
	if err := tx.QueryRowContext(ctx, sqlAdvanceStream, streamDeviceList).Scan(&pos); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, sqlInsertChange, pos, userID, deviceID, deleted); err != nil {
		return err
	}
	c.last = pos
	return nil
}

// withChanges runs fn in a transaction and publishes the device list
// changes it recorded after the commit. A retried transaction starts with
// a fresh collector.
func (k *KeyServer) withChanges(ctx context.Context, fn func(tx *sql.Tx, c *changes) error) error {
	var c *changes
	err := k.db.WithTx(ctx, func(tx *sql.Tx) error {
		c = &changes{k: k}
		return fn(tx, c)
	})
	if err == nil && c != nil && c.last > 0 {
		k.stream.advance(c.last)
	}
	return err
}

// DeviceListChanges lists the users whose device lists changed in (from, to].
func (k *KeyServer) DeviceListChanges(ctx context.Context, from, to int64) ([]string, error) {
	if to <= from {
		return nil, nil
	}
	rows, err := k.db.Reader().QueryContext(ctx, sqlChangedUsers, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var users []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		users = append(users, u)
	}
	return users, rows.Err()
}

// localpart returns the localpart of a local user ID, ok false for
// remote or malformed IDs.
func (k *KeyServer) localpart(userID string) (string, bool) {
	id, err := mxid.ParseUserID(userID)
	if err != nil || id.Server != k.serverName {
		return "", false
	}
	return id.Localpart, true
}

// serverOf is the server part of a user ID, "" when malformed.
func serverOf(userID string) string {
	id, err := mxid.ParseUserID(userID)
	if err != nil {
		return ""
	}
	return id.Server
}
