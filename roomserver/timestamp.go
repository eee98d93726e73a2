package roomserver

import (
	"context"
	"fmt"
	"math"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/roomserver/api"
)

// Reading events by time uses the (room_nid, origin_server_ts) index;
// event_nid breaks ties so that paging through equal timestamps is exact.
var (
	sqlEventsAfterTS = `SELECT ` + sqlEventColumns + ` FROM roomserver_events e
		JOIN roomserver_rooms r ON r.room_nid = e.room_nid
		WHERE e.room_nid = $1 AND e.status = ` + fmt.Sprint(statusAccepted) + `
		AND (e.origin_server_ts > $2 OR (e.origin_server_ts = $2 AND e.event_nid > $3))
		ORDER BY e.origin_server_ts, e.event_nid LIMIT $4`
	sqlEventsBeforeTS = `SELECT ` + sqlEventColumns + ` FROM roomserver_events e
		JOIN roomserver_rooms r ON r.room_nid = e.room_nid
		WHERE e.room_nid = $1 AND e.status = ` + fmt.Sprint(statusAccepted) + `
		AND (e.origin_server_ts < $2 OR (e.origin_server_ts = $2 AND e.event_nid < $3))
		ORDER BY e.origin_server_ts DESC, e.event_nid DESC LIMIT $4`
)

// Events are checked for visibility in batches; a user who may see little
// of a room is not worth scanning all of it for.
const (
	timestampBatch      = 100
	timestampMaxBatches = 50
)

// EventAtTimestamp returns the accepted event nearest to ts in the given
// direction that the user may see.
func (r *Roomserver) EventAtTimestamp(ctx context.Context, roomID, userID string, ts int64, forward bool) (gomatrixserverlib.PDU, error) {
	return r.eventAtTimestamp(ctx, roomID, ts, forward, func(batch []gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
		visible, err := r.VisibleEvents(ctx, userID, batch)
		if err != nil || len(visible) == 0 {
			return nil, err
		}
		return visible[0], nil
	})
}

// EventAtTimestampForServer returns the accepted event nearest to ts in
// the given direction that the server may see.
func (r *Roomserver) EventAtTimestampForServer(ctx context.Context, roomID, server string, ts int64, forward bool) (gomatrixserverlib.PDU, error) {
	return r.eventAtTimestamp(ctx, roomID, ts, forward, func(batch []gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
		visible, err := r.ServerCanSee(ctx, server, batch)
		if err != nil {
			return nil, err
		}
		for i, ok := range visible {
			if ok {
				return batch[i], nil
			}
		}
		return nil, nil
	})
}

// eventAtTimestamp scans the room's accepted events from ts in the given
// direction, a batch at a time, and returns the first one firstVisible
// picks from a batch (nil: none in it).
func (r *Roomserver) eventAtTimestamp(ctx context.Context, roomID string, ts int64, forward bool,
	firstVisible func([]gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error)) (gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	query, cursorTS, cursorNID := sqlEventsAfterTS, ts, int64(0)
	if !forward {
		query, cursorNID = sqlEventsBeforeTS, math.MaxInt64
	}
	for range timestampMaxBatches {
		rows, err := q.QueryContext(ctx, query, rm.nid, cursorTS, cursorNID, timestampBatch)
		if err != nil {
			return nil, err
		}
		var batch []gomatrixserverlib.PDU
		for rows.Next() {
			ev, err := scanEvent(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			batch = append(batch, ev.pdu)
			cursorTS, cursorNID = int64(ev.pdu.OriginServerTS()), ev.nid
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if found, err := firstVisible(batch); err != nil || found != nil {
			return found, err
		}
		if len(batch) < timestampBatch {
			break
		}
	}
	return nil, api.ErrEventNotFound
}
