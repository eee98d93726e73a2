// Package searchapi serves server-side search (POST /search) over the
// room events a user may see. It indexes events as they arrive from the
// roomserver's output stream, from a position of its own (indexer.go),
// with SQLite FTS5 or PostgreSQL full text search (dialect.go), and
// applies the roomserver's history visibility rules to every result.
package searchapi

import (
	"context"
	"database/sql"
	"errors"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/streamconsumer"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// Roomserver is what search needs from the roomserver: the output stream
// to index, events and state to serve, and the visibility rules.
type Roomserver interface {
	streamconsumer.Stream
	LatestPosition(ctx context.Context) (int64, error)
	Event(ctx context.Context, eventID string) (*rsapi.Event, error)
	Memberships(ctx context.Context, userID string) ([]rsapi.Membership, error)
	ForgottenRooms(ctx context.Context, userID string) ([]string, error)
	VisibleEvents(ctx context.Context, userID string, events []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error)
	ReadableState(ctx context.Context, roomID, userID string) (rsapi.ReadableState, error)
	StateAt(ctx context.Context, stateNID int64, types ...string) ([]gomatrixserverlib.PDU, error)
	StateEventAt(ctx context.Context, snapshot int64, eventType, stateKey string) (gomatrixserverlib.PDU, error)
}

// SearchAPI is the search component.
type SearchAPI struct {
	db         *storage.DB
	fts        dialect
	rs         Roomserver
	serverName string
	start      int64 // the stored stream position at startup
	// indexed follows the indexer, so that a search waits for what was
	// sent before it (search.go).
	indexed *streamconsumer.Progress
}

// New opens the search index. Start must be called to index events.
func New(ctx context.Context, db *storage.DB, serverName string, rs Roomserver) (*SearchAPI, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	s := &SearchAPI{db: db, fts: dialectOf(db), rs: rs, serverName: serverName}
	err := db.Reader().QueryRowContext(ctx, sqlPosition, consumerName).Scan(&s.start)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	s.indexed = streamconsumer.NewProgress(s.start)
	return s, nil
}

// Start indexes the roomserver's output until ctx ends.
func (s *SearchAPI) Start(ctx context.Context) {
	go streamconsumer.Run(ctx, s.rs, s.start, s.indexBatch, logrus.WithField("component", "searchapi.indexer"), s.indexed)
}

// AuthedHandler is a handler for a logged-in device.
type AuthedHandler = func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error

// Register adds POST /search; authed wraps a handler with the client
// API's access token check and rate limit.
func (s *SearchAPI) Register(root *mux.Router, authed func(AuthedHandler) http.Handler) {
	const prefix = "/_matrix/client/{apiVersion:(?:r0|v3)}"
	root.Handle(prefix+"/search", authed(s.search)).Methods(http.MethodPost)
}

func (s *SearchAPI) userID(localpart string) string { return "@" + localpart + ":" + s.serverName }
