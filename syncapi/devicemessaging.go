package syncapi

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"sync/atomic"

	"github.com/gorilla/mux"

	"github.com/plexus-chat/plexus/storage"
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
func (s *SyncAPI) reservePositions(ctx context.Context, tx *sql.Tx, stream string, n int) (int64, error) {
	var last int64
	if err := tx.QueryRowContext(ctx, sqlAdvanceCounter, stream, n).Scan(&last); err != nil {
		return 0, err
	}
	s.heads.advance(stream, last)
	return last, nil
}

// streamHeads holds, for the counted streams, a position no committed row
// is beyond: it moves when a position is taken, before the commit, so it
// is never behind the database (at worst ahead, after a rollback). A sync
// whose token is at the head has nothing to read from that stream.
type streamHeads struct {
	toDevice, presence atomic.Int64
}

func (h *streamHeads) of(stream string) *atomic.Int64 {
	switch stream {
	case streamToDevice:
		return &h.toDevice
	case streamPresence:
		return &h.presence
	}
	panic("syncapi: no head for the stream " + stream)
}

func (h *streamHeads) advance(stream string, pos int64) {
	head := h.of(stream)
	for {
		cur := head.Load()
		if pos <= cur || head.CompareAndSwap(cur, pos) {
			return
		}
	}
}

// load starts the heads at the stored counters.
func (h *streamHeads) load(ctx context.Context, db *storage.DB) error {
	return db.ReadTx(ctx, func(tx *sql.Tx) error {
		for _, stream := range []string{streamToDevice, streamPresence} {
			pos, err := streamPosition(ctx, tx, stream)
			if err != nil {
				return err
			}
			h.advance(stream, pos)
		}
		return nil
	})
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
