// Package syncapi serves /sync and the history endpoints. It keeps its own
// copy of room events and current state, filled from the roomserver's
// output stream (consumer.go), and wakes long-polling clients through a
// notifier when something for them arrives.
package syncapi

import (
	"context"
	"encoding/json"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/storage"
)

// Accounts is what the sync API needs from the accounts component.
type Accounts interface {
	AccountDataSince(ctx context.Context, localpart string, since int64) ([]accounts.AccountDataEntry, int64, error)
	Filter(ctx context.Context, localpart, filterID string) (json.RawMessage, error)
}

// SyncAPI is the sync component.
type SyncAPI struct {
	db         *storage.DB
	serverName string
	accounts   Accounts
	notifier   *notifier
	consumer   *consumer
	rs         Roomserver
}

// New opens the sync API's storage. Start must be called to consume events.
func New(ctx context.Context, db *storage.DB, serverName string, rs Roomserver, accts Accounts) (*SyncAPI, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	n := newNotifier()
	c, err := newConsumer(ctx, db, rs, n)
	if err != nil {
		return nil, err
	}
	return &SyncAPI{db: db, serverName: serverName, accounts: accts, notifier: n, consumer: c, rs: rs}, nil
}

// Start consumes the roomserver's output until ctx ends.
func (s *SyncAPI) Start(ctx context.Context) {
	go s.consumer.run(ctx)
}

// WakeUser wakes a user's long-polling syncs, for changes other components
// make (account data).
func (s *SyncAPI) WakeUser(userID string) { s.notifier.wake(userID) }

func (s *SyncAPI) userID(localpart string) string { return "@" + localpart + ":" + s.serverName }
