package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/gorilla/mux"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// Receipt types clients may send.
const (
	receiptRead        = "m.read"
	receiptReadPrivate = "m.read.private"
	markerFullyRead    = "m.fully_read"
)

// maxIDLength bounds room, event and thread IDs taken from requests (the
// spec caps IDs at 255 bytes).
const maxIDLength = 255

const (
	// The receipt stream's position: one row, bumped by every change, so
	// that changes commit in position order.
	sqlNextReceiptPos   = `UPDATE syncapi_receipt_stream SET pos = pos + 1 RETURNING pos`
	sqlReceiptStreamPos = `SELECT pos FROM syncapi_receipt_stream`
	sqlReceiptEventID   = `SELECT event_id FROM syncapi_receipts WHERE room_id = $1 AND user_id = $2 AND receipt_type = $3 AND thread_id = $4`
	sqlUpsertReceipt    = `INSERT INTO syncapi_receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, pos)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, pos = excluded.pos`
	// The receipts changed in a window in the rooms the user is joined
	// to; private ones only when they are the user's own.
	sqlReceiptsSince = `SELECT r.room_id, r.user_id, r.receipt_type, r.thread_id, r.event_id, r.ts FROM syncapi_receipts r
		JOIN syncapi_current_state m ON m.room_id = r.room_id AND m.type = 'm.room.member' AND m.state_key = $1 AND m.membership = 'join'
		WHERE r.pos > $2 AND r.pos <= $3 AND (r.receipt_type <> 'm.read.private' OR r.user_id = $1)`
	// Where the user's read receipts stand in each room's stream.
	sqlUserReadPositions = `SELECT r.room_id, r.thread_id, e.pos FROM syncapi_receipts r
		JOIN syncapi_events e ON e.event_id = r.event_id
		WHERE r.user_id = $1 AND r.receipt_type IN ('m.read', 'm.read.private') AND e.pos IS NOT NULL`
)

// registerReceiptRoutes adds receipts and read markers.
func (s *SyncAPI) registerReceiptRoutes(root *mux.Router, prefix string, authed func(AuthedHandler) http.Handler) {
	root.Handle(prefix+"/rooms/{roomId}/receipt/{receiptType}/{eventId}", authed(s.postReceipt)).Methods(http.MethodPost)
	root.Handle(prefix+"/rooms/{roomId}/read_markers", authed(s.postReadMarkers)).Methods(http.MethodPost)
}

// postReceipt is POST /rooms/{roomId}/receipt/{receiptType}/{eventId}.
func (s *SyncAPI) postReceipt(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	vars := httputil.Vars(r)
	roomID, receiptType, eventID := vars["roomId"], vars["receiptType"], vars["eventId"]
	switch receiptType {
	case receiptRead, receiptReadPrivate, markerFullyRead:
	default:
		return httputil.InvalidParam("Unknown receipt type %q", receiptType)
	}
	threadID, err := readThreadID(r)
	if err != nil {
		return err
	}
	if threadID != "" && receiptType == markerFullyRead {
		return httputil.InvalidParam("thread_id is not allowed for m.fully_read")
	}
	ctx := r.Context()
	userID := s.userID(sess.Localpart)
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	if err := s.checkEventInRoom(ctx, roomID, eventID); err != nil {
		return err
	}
	if threadID != "" && threadID != "main" {
		if err := s.checkEventInRoom(ctx, roomID, threadID); err != nil {
			return httputil.InvalidParam("thread_id is neither main nor an event of this room")
		}
	}
	if receiptType == markerFullyRead {
		err = s.setFullyRead(ctx, sess.Localpart, roomID, eventID)
	} else {
		err = s.putReceipt(ctx, roomID, userID, receiptType, threadID, eventID)
	}
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// readThreadID reads the optional thread_id of a receipt's body; an
// empty body is no thread.
func readThreadID(r *http.Request) (string, error) {
	data, err := httputil.ReadBody(r)
	if err != nil {
		return "", err
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return "", nil
	}
	var body map[string]json.RawMessage
	if err := httputil.DecodeJSONObject(data, &body); err != nil {
		return "", err
	}
	raw, ok := body["thread_id"]
	if !ok {
		return "", nil
	}
	var threadID string
	if err := json.Unmarshal(raw, &threadID); err != nil || threadID == "" || len(threadID) > maxIDLength ||
		(threadID != "main" && !strings.HasPrefix(threadID, "$")) {
		return "", httputil.InvalidParam("thread_id must be main or a thread root's event ID")
	}
	return threadID, nil
}

// postReadMarkers is POST /rooms/{roomId}/read_markers.
func (s *SyncAPI) postReadMarkers(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	roomID := httputil.Vars(r)["roomId"]
	var body struct {
		FullyRead   string `json:"m.fully_read"`
		Read        string `json:"m.read"`
		ReadPrivate string `json:"m.read.private"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	ctx := r.Context()
	userID := s.userID(sess.Localpart)
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return err
	}
	// Check every event before changing anything.
	for _, id := range []string{body.FullyRead, body.Read, body.ReadPrivate} {
		if id == "" {
			continue
		}
		if err := s.checkEventInRoom(ctx, roomID, id); err != nil {
			return err
		}
	}
	if body.FullyRead != "" {
		if err := s.setFullyRead(ctx, sess.Localpart, roomID, body.FullyRead); err != nil {
			return err
		}
	}
	if body.Read != "" {
		if err := s.putReceipt(ctx, roomID, userID, receiptRead, "", body.Read); err != nil {
			return err
		}
	}
	if body.ReadPrivate != "" {
		if err := s.putReceipt(ctx, roomID, userID, receiptReadPrivate, "", body.ReadPrivate); err != nil {
			return err
		}
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// checkEventInRoom answers 404 unless eventID is an event of the room.
// An event the consumer has not copied yet is asked of the roomserver.
func (s *SyncAPI) checkEventInRoom(ctx context.Context, roomID, eventID string) error {
	notFound := httputil.NotFound("No event %q in this room", eventID)
	if !strings.HasPrefix(eventID, "$") || len(eventID) > maxIDLength {
		return notFound
	}
	var inRoom string
	err := s.db.Reader().QueryRowContext(ctx, `SELECT room_id FROM syncapi_events WHERE event_id = $1`, eventID).Scan(&inRoom)
	if errors.Is(err, sql.ErrNoRows) {
		ev, rerr := s.rs.Event(ctx, eventID)
		if errors.Is(rerr, rsapi.ErrEventNotFound) {
			return notFound
		}
		if rerr != nil {
			return rerr
		}
		inRoom = ev.RoomID().String()
	} else if err != nil {
		return err
	}
	if inRoom != roomID {
		return notFound
	}
	return nil
}

// putReceipt stores a receipt, replacing the user's previous one of that
// type and thread in the room, and wakes those who see it: the room's
// members, or for a private receipt its owner.
func (s *SyncAPI) putReceipt(ctx context.Context, roomID, userID, receiptType, threadID, eventID string) error {
	changed := false
	err := s.db.WithTx(ctx, func(tx *sql.Tx) error {
		changed = false
		var current string
		err := tx.QueryRowContext(ctx, sqlReceiptEventID, roomID, userID, receiptType, threadID).Scan(&current)
		if err == nil && current == eventID {
			return nil
		}
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var pos int64
		if err := tx.QueryRowContext(ctx, sqlNextReceiptPos).Scan(&pos); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, sqlUpsertReceipt, roomID, userID, receiptType, threadID, eventID, storage.NowMillis(), pos); err != nil {
			return err
		}
		changed = true
		return nil
	})
	if err != nil || !changed {
		return err
	}
	s.federateReceipt(ctx, roomID, userID, receiptType, threadID, eventID) // public ones to other servers (federation_edus.go)
	// The user's badge on their devices may drop (pushgateway_badge.go).
	s.receiptMoved(userID, receiptType)
	if receiptType == receiptReadPrivate {
		s.notifier.wake(userID)
		return nil
	}
	users, err := s.consumer.joinedUsers(ctx, roomID)
	if err != nil {
		return err
	}
	for _, u := range users {
		s.notifier.wake(u)
	}
	return nil
}

// setFullyRead moves the user's fully read marker: the m.fully_read
// event of their room account data.
func (s *SyncAPI) setFullyRead(ctx context.Context, localpart, roomID, eventID string) error {
	content, err := json.Marshal(map[string]string{"event_id": eventID})
	if err != nil {
		return err
	}
	if _, err := s.accounts.PutAccountData(ctx, localpart, roomID, markerFullyRead, content); err != nil {
		return err
	}
	s.notifier.wake(s.userID(localpart))
	return nil
}

// receiptsSince returns the m.receipt content of each room with receipts
// the user may see that changed in (since, to].
func receiptsSince(ctx context.Context, tx *sql.Tx, userID string, since, to int64) (map[string]map[string]map[string]map[string]any, error) {
	rows, err := tx.QueryContext(ctx, sqlReceiptsSince, userID, since, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	// room → event → receipt type → user → {ts, thread_id}
	out := map[string]map[string]map[string]map[string]any{}
	for rows.Next() {
		var roomID, user, receiptType, threadID, eventID string
		var ts int64
		if err := rows.Scan(&roomID, &user, &receiptType, &threadID, &eventID, &ts); err != nil {
			return nil, err
		}
		room := out[roomID]
		if room == nil {
			room = map[string]map[string]map[string]any{}
			out[roomID] = room
		}
		if room[eventID] == nil {
			room[eventID] = map[string]map[string]any{}
		}
		byUser := room[eventID][receiptType]
		if byUser == nil {
			byUser = map[string]any{}
			room[eventID][receiptType] = byUser
		}
		receipt := map[string]any{"ts": ts}
		if threadID != "" {
			receipt["thread_id"] = threadID
		}
		byUser[user] = receipt
	}
	return out, rows.Err()
}
