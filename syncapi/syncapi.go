// Package syncapi serves /sync and the history endpoints. It keeps its own
// copy of room events and current state, filled from the roomserver's
// output stream (consumer.go), and wakes long-polling clients through a
// notifier when something for them arrives.
package syncapi

import (
	"context"
	"errors"

	"encoding/json"
	"time"

	"github.com/tidwall/gjson"

	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/storage"
)

// Accounts is what the sync API needs from the accounts component: account
// data (read for /sync, written for read markers), filters, and users'
// devices (send-to-device to "*") and existence (presence).
type Accounts interface {
	AccountDataSince(ctx context.Context, localpart string, since int64) ([]accounts.AccountDataEntry, int64, error)
	PutAccountData(ctx context.Context, localpart, roomID, dataType string, content json.RawMessage) (int64, error)
	AccountData(ctx context.Context, localpart, roomID, dataType string) (json.RawMessage, error)
	Filter(ctx context.Context, localpart, filterID string) (json.RawMessage, error)
	Devices(ctx context.Context, localpart string) ([]accounts.Device, error)
	Account(ctx context.Context, localpart string) (*accounts.Account, error)
}

// SyncAPI is the sync component.
type SyncAPI struct {
	db         *storage.DB
	serverName string
	accounts   Accounts
	notifier   *notifier
	consumer   *consumer
	rs         Roomserver
	typing     *typingState
	backfill   *backfiller // nil: history from this server only
	// edus hands our users' EDUs to other servers (federation_edus.go);
	// nil without federation.
	edus EDUSender
	// keys is the key server, for device lists and key counts (keys.go);
	// nil without end-to-end encryption.
	keys KeyServer
	// unread keeps notification counts between syncs (unreadcache.go).
	unread *unreadCache
	// toDeviceCleared spares syncs the look for acknowledged to-device
	// messages (todevice.go).
	toDeviceCleared clearedMarks
	// localPresence is the presence stored for local users (presence.go).
	localPresence presenceCache
	// heads are the to-device and presence streams' newest positions
	// (devicemessaging.go).
	heads streamHeads
}

// New opens the sync API's storage. Start must be called to consume events.
func New(ctx context.Context, db *storage.DB, serverName string, rs Roomserver, accts Accounts, opts ...Option) (*SyncAPI, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, relationsComponent, relationsMigrations); err != nil { // relations_storage.go
		return nil, err
	}
	n := newNotifier()
	c, err := newConsumer(ctx, db, serverName, rs, n)
	if err != nil {
		return nil, err
	}
	s := &SyncAPI{db: db, serverName: serverName, accounts: accts, notifier: n, consumer: c, rs: rs, unread: newUnreadCache()}
	s.typing = newTypingState(s.wakeRoom)
	if err := s.heads.load(ctx, db); err != nil {
		return nil, err
	}
	for _, o := range opts { // options: federation_edus.go, keys.go, backfill.go
		o(s)
	}
	if s.backfill != nil {
		if err := db.Migrate(ctx, backfillComponent, backfillMigrations); err != nil {
			return nil, err
		}
	}
	if err := s.migratePushGateway(ctx); err != nil { // pushgateway.go
		return nil, err
	}
	return s, nil
}

// Start consumes the roomserver's output until ctx ends.
func (s *SyncAPI) Start(ctx context.Context) {
	go s.consumer.run(ctx)
	s.startKeys(ctx) // keys.go: wakes room-mates of users whose device lists change
	// pushgateway.go: sends notifications to push gateways.
	s.startPushGateway(ctx)
}

// WakeUser wakes a user's long-polling syncs, for changes other components
// make (account data).
func (s *SyncAPI) WakeUser(userID string) { s.notifier.wake(userID) }

func (s *SyncAPI) userID(localpart string) string { return "@" + localpart + ":" + s.serverName }

// wakeRoom wakes the syncs of a room's joined members.
func (s *SyncAPI) wakeRoom(roomID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	users, err := s.consumer.joinedUsers(ctx, roomID)
	if err != nil {
		logrus.WithError(err).WithField("room_id", roomID).Warn("cannot wake room members")
		return
	}
	for _, u := range users {
		s.notifier.wake(u)
	}
}

// ignoredUsers reads the user's m.ignored_user_list: their events and
// invites are left out of /sync.
func (s *SyncAPI) ignoredUsers(ctx context.Context, localpart string) (map[string]bool, error) {
	raw, err := s.accounts.AccountData(ctx, localpart, "", "m.ignored_user_list")
	if errors.Is(err, accounts.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ignored := map[string]bool{}
	gjson.GetBytes(raw, "ignored_users").ForEach(func(k, _ gjson.Result) bool {
		ignored[k.String()] = true
		return true
	})
	return ignored, nil
}
