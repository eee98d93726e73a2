package syncapi

import (
	"context"
	"database/sql"
	"errors"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/eventfilter"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// registerEphemeralRoutes adds typing, receipts and read markers.
func (s *SyncAPI) registerEphemeralRoutes(root *mux.Router, prefix string, authed func(AuthedHandler) http.Handler) {
	root.Handle(prefix+"/rooms/{roomId}/typing/{userId}", authed(s.setTyping)).Methods(http.MethodPut)
	s.registerReceiptRoutes(root, prefix, authed)
}

// requireJoined answers 403 unless the user is joined to the room.
func (s *SyncAPI) requireJoined(ctx context.Context, roomID, userID string) error {
	var membership sql.NullString
	err := s.db.Reader().QueryRowContext(ctx, `SELECT membership FROM syncapi_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`, roomID, userID).Scan(&membership)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && membership.String != spec.Join) {
		return httputil.Forbidden("You are not joined to this room")
	}
	return err
}

// sqlJoinedRoomsSince lists the rooms the user is joined to, with the
// position of the join.
const sqlJoinedRoomsSince = `SELECT room_id, pos FROM syncapi_current_state
	WHERE type = 'm.room.member' AND state_key = $1 AND membership = 'join'`

// syncEphemeral fills typing notifications, receipts and unread counts of
// joined rooms. A joined room whose only news is ephemeral gets an entry
// with just that.
// joinedNow are the rooms the user is joined to as of next.PDU.
func (s *SyncAPI) syncEphemeral(ctx context.Context, req *syncRequest, since Token, next *Token, resp *syncResponse, joinedNow map[string]bool) error {
	initial := req.since == nil
	if initial {
		since = Token{}
	}
	roomFilter := req.filter.Room
	if roomFilter == nil {
		roomFilter = &eventfilter.RoomFilter{}
	}
	return s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		joined := map[string]bool{}
		for roomID := range joinedNow {
			if matchesRooms(roomFilter.Rooms, roomFilter.NotRooms, roomID) {
				joined[roomID] = true
			}
		}
		var receiptPos int64
		if err := tx.QueryRowContext(ctx, sqlReceiptStreamPos).Scan(&receiptPos); err != nil {
			return err
		}
		var receipts map[string]map[string]map[string]map[string]any
		if receiptPos > since.Receipt {
			var err error
			if receipts, err = receiptsSince(ctx, tx, req.userID, since.Receipt, receiptPos); err != nil {
				return err
			}
		}
		typing, typingPos := s.typing.changes(since.Typing, initial, joined)
		next.Typing, next.Receipt = typingPos, receiptPos

		for roomID := range joined {
			var events []any
			if users, ok := typing[roomID]; ok && wantEphemeral(roomFilter.Ephemeral, roomID, "m.typing") {
				events = append(events, map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
			}
			if content, ok := receipts[roomID]; ok && wantEphemeral(roomFilter.Ephemeral, roomID, "m.receipt") {
				events = append(events, map[string]any{"type": "m.receipt", "content": content})
			}
			if f := roomFilter.Ephemeral; f != nil && f.Limit > 0 && len(events) > f.Limit {
				events = events[:f.Limit]
			}
			if len(events) == 0 {
				continue
			}
			jr := resp.Rooms.Join[roomID]
			if jr == nil {
				jr = ephemeralOnlyRoom(req, next.PDU)
				resp.Rooms.Join[roomID] = jr
			}
			jr.Ephemeral.Events = append(jr.Ephemeral.Events, events...)
		}

		if len(resp.Rooms.Join) == 0 {
			return nil // no unread counts to give
		}
		marks, err := readPositions(ctx, tx, req.userID)
		if err != nil {
			return err
		}
		threads := roomFilter.Timeline != nil && roomFilter.Timeline.UnreadThreadNotifications
		for roomID, jr := range resp.Rooms.Join {
			u := unreadQuery{roomID: roomID, userID: req.userID, marks: marks[roomID], to: next.PDU, cache: s.unread}
			main, perThread, err := u.counts(ctx, tx, threads)
			if err != nil {
				return err
			}
			jr.Unread = main.json()
			if len(perThread) > 0 {
				jr.UnreadThreads = map[string]map[string]int{}
				for root, c := range perThread {
					jr.UnreadThreads[root] = c.json()
				}
			}
		}
		return nil
	})
}

// joinedRooms lists the rooms the user was joined to as of position now.
func joinedRooms(ctx context.Context, tx *sql.Tx, userID string, now int64) (map[string]bool, error) {
	rows, err := tx.QueryContext(ctx, sqlJoinedRoomsSince, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var roomID string
		var pos int64
		if err := rows.Scan(&roomID, &pos); err != nil {
			return nil, err
		}
		if pos <= now { // later joins come with the sync that carries them
			out[roomID] = true
		}
	}
	return out, rows.Err()
}

// wantEphemeral applies the room filter's ephemeral section.
func wantEphemeral(f *eventfilter.RoomEventFilter, roomID, evType string) bool {
	if f == nil {
		return true
	}
	return matchesEventFilter(&f.EventFilter, evType, "") && matchesRooms(f.Rooms, f.NotRooms, roomID)
}

// ephemeralOnlyRoom is the entry of a joined room that has only ephemeral
// news in an incremental sync: no timeline events, no state.
func ephemeralOnlyRoom(req *syncRequest, now int64) *joinedRoom {
	jr := &joinedRoom{
		Summary:     map[string]any{},
		Timeline:    timeline{Events: []clientevent.Event{}, PrevBatch: Token{PDU: now}.String()},
		Ephemeral:   eventList{Events: []any{}},
		AccountData: eventList{Events: []any{}},
	}
	(&builder{req: req}).setState(&jr.State, &jr.StateAfter, nil)
	return jr
}
