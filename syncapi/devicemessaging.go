package syncapi

import (
	"context"
	"database/sql"
	"errors"
	"net/http"

	"github.com/gorilla/mux"
)

// registerDeviceMessagingRoutes adds send-to-device and presence.
func (s *SyncAPI) registerDeviceMessagingRoutes(root *mux.Router, prefix string, authed func(AuthedHandler) http.Handler) {
	root.Handle(prefix+"/sendToDevice/{eventType}/{txnId}", authed(s.sendToDevice)).Methods(http.MethodPut)
	root.Handle(prefix+"/presence/{userId}/status", authed(s.getPresence)).Methods(http.MethodGet)
	root.Handle(prefix+"/presence/{userId}/status", authed(s.putPresence)).Methods(http.MethodPut)
}

// syncDeviceMessaging fills to-device messages and presence. It first
// applies the request's set_presence, so the user's own change shows up.
func (s *SyncAPI) syncDeviceMessaging(ctx context.Context, req *syncRequest, since Token, next *Token, resp *syncResponse) error {
	if err := s.presenceFromSync(ctx, req.userID, req.setPresence); err != nil {
		return err
	}
	if err := s.syncToDevice(ctx, req, since, next, resp); err != nil {
		return err
	}
	return s.syncPresence(ctx, req, since, next, resp)
}

// Streams counted in syncapi_stream_counters.
const (
	streamToDevice = "to_device"
	streamPresence = "presence"
)

// Positions of the streams whose rows are deleted (to-device) or change in
// place (presence) come from a stored counter, so they only grow, also
// across restarts. The upsert locks the counter's row until the
// transaction ends, so positions commit in order: a reader that sees the
// counter at n sees every row up to n.
const (
	sqlAdvanceCounter = `INSERT INTO syncapi_stream_counters (stream, pos) VALUES ($1, $2)
		ON CONFLICT (stream) DO UPDATE SET pos = syncapi_stream_counters.pos + excluded.pos RETURNING pos`
	sqlCounter = `SELECT pos FROM syncapi_stream_counters WHERE stream = $1`
)

// reservePositions takes n new positions of a stream in tx and returns the
// last; the positions are last-n+1 … last.
func reservePositions(ctx context.Context, tx *sql.Tx, stream string, n int) (int64, error) {
	var last int64
	err := tx.QueryRowContext(ctx, sqlAdvanceCounter, stream, n).Scan(&last)
	return last, err
}

// streamPosition is a stream's newest position, 0 when none was taken.
func streamPosition(ctx context.Context, tx *sql.Tx, stream string) (int64, error) {
	var pos int64
	err := tx.QueryRowContext(ctx, sqlCounter, stream).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return pos, err
}
