package syncapi

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	"github.com/plexus-chat/plexus/storage"
)

// Send-to-device messages wait in syncapi_send_to_device, one row per
// recipient device, with a position in the to-device stream. /sync hands a
// device its messages after since.ToDevice, and deletes those at or below
// it: the client acknowledged them by syncing with that token. A client
// that syncs again with an older token gets the unacknowledged ones again.

const (
	// maxToDeviceMessages bounds the messages one request stores, after
	// "*" is expanded to the user's devices.
	maxToDeviceMessages = 1000
	// maxToDevicePerSync and maxToDeviceBytesPerSync bound one /sync's
	// share of a device's queue; the rest comes with the next sync.
	maxToDevicePerSync      = 100
	maxToDeviceBytesPerSync = 1 << 20
	maxEventTypeLength      = 255
	maxTxnIDLength          = 255
	// toDeviceTxnRetention is how long a transaction ID is remembered to
	// make a retried request a no-op.
	toDeviceTxnRetention = 24 * time.Hour
)

const (
	sqlInsertToDeviceTxn = `INSERT INTO syncapi_send_to_device_txns (user_id, device_id, txn_id, ts)
		VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id, txn_id) DO NOTHING`
	sqlPruneToDeviceTxns = `DELETE FROM syncapi_send_to_device_txns WHERE user_id = $1 AND device_id = $2 AND ts < $3`
	sqlInsertToDevice    = `INSERT INTO syncapi_send_to_device (pos, user_id, device_id, sender, type, content)
		VALUES ($1, $2, $3, $4, $5, $6)`
	sqlHasAckedToDevice    = `SELECT 1 FROM syncapi_send_to_device WHERE user_id = $1 AND device_id = $2 AND pos <= $3 LIMIT 1`
	sqlDeleteAckedToDevice = `DELETE FROM syncapi_send_to_device WHERE user_id = $1 AND device_id = $2 AND pos <= $3`
	sqlPendingToDevice     = `SELECT pos, sender, type, content FROM syncapi_send_to_device
		WHERE user_id = $1 AND device_id = $2 AND pos > $3 ORDER BY pos LIMIT $4`
)

// toDeviceMessage is one message for one device.
type toDeviceMessage struct {
	userID, deviceID string
	content          json.RawMessage
}

// validText is text that both databases store: UTF-8 without NUL.
func validText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

func (s *SyncAPI) sendToDevice(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	ctx := r.Context()
	vars := httputil.Vars(r)
	evType, txnID := vars["eventType"], vars["txnId"]
	if evType == "" || len(evType) > maxEventTypeLength || !validText(evType) {
		return httputil.InvalidParam("The event type must be text of 1 to %d bytes", maxEventTypeLength)
	}
	if txnID == "" || len(txnID) > maxTxnIDLength || !validText(txnID) {
		return httputil.InvalidParam("The transaction ID must be text of 1 to %d bytes", maxTxnIDLength)
	}
	var body struct {
		Messages map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	if body.Messages == nil {
		return httputil.BadJSON("messages is required")
	}
	entries := 0
	for userID, devices := range body.Messages {
		for deviceID, content := range devices {
			if c := bytes.TrimSpace(content); len(c) == 0 || c[0] != '{' {
				return httputil.BadJSON("The message for %s's device %q is not an object", userID, deviceID)
			}
		}
		entries += len(devices)
	}
	if entries > maxToDeviceMessages {
		return httputil.TooLarge("At most %d messages can be sent at once", maxToDeviceMessages)
	}
	msgs, err := s.toDeviceRecipients(ctx, httputil.LoggerFrom(r), body.Messages)
	if err != nil {
		return err
	}
	if len(msgs) > maxToDeviceMessages {
		return httputil.TooLarge("At most %d messages can be sent at once", maxToDeviceMessages)
	}

	sender := s.userID(sess.Localpart)
	repeated := false
	err = s.db.WithTx(ctx, func(tx *sql.Tx) error {
		now := storage.NowMillis()
		res, err := tx.ExecContext(ctx, sqlInsertToDeviceTxn, sender, sess.DeviceID, txnID, now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			repeated = true // a retry of a request already done
			return nil
		}
		if _, err := tx.ExecContext(ctx, sqlPruneToDeviceTxns, sender, sess.DeviceID, now-toDeviceTxnRetention.Milliseconds()); err != nil {
			return err
		}
		if len(msgs) == 0 {
			return nil
		}
		last, err := s.reservePositions(ctx, tx, streamToDevice, len(msgs))
		if err != nil {
			return err
		}
		first := last - int64(len(msgs)) + 1
		for i, m := range msgs {
			if _, err := tx.ExecContext(ctx, sqlInsertToDevice, first+int64(i), m.userID, m.deviceID, sender, evType, string(m.content)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !repeated {
		s.federateToDevice(ctx, sender, evType, body.Messages) // remote users' messages to their servers (federation_edus.go)
		woken := map[string]bool{}
		for _, m := range msgs {
			if !woken[m.userID] {
				woken[m.userID] = true
				s.notifier.wake(m.userID)
			}
		}
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// toDeviceRecipients resolves the request's messages to existing local
// devices, in a stable order: "*" stands for every device of the user
// that has no message of its own, and unknown users and devices are
// dropped.
func (s *SyncAPI) toDeviceRecipients(ctx context.Context, log *logrus.Entry, messages map[string]map[string]json.RawMessage) ([]toDeviceMessage, error) {
	dir := s.accounts
	users := make([]string, 0, len(messages))
	for u := range messages {
		users = append(users, u)
	}
	slices.Sort(users)
	var out []toDeviceMessage
	for _, u := range users {
		id, err := mxid.ParseUserID(u)
		if err != nil {
			return nil, httputil.InvalidParam("%q is not a user ID", u)
		}
		if id.Server != s.serverName {
			// Remote users' devices are reached over federation (an
			// m.direct_to_device EDU: federateToDevice).
			log.WithField("user_id", u).Debug("send-to-device to a remote user left to federation")
			continue
		}
		perDevice := messages[u]
		if len(perDevice) == 0 {
			continue
		}
		devices, err := dir.Devices(ctx, id.Localpart)
		if err != nil {
			return nil, err
		}
		for _, d := range devices {
			content, ok := perDevice[d.DeviceID]
			if !ok {
				content, ok = perDevice["*"]
			}
			if ok {
				out = append(out, toDeviceMessage{userID: s.userID(d.Localpart), deviceID: d.DeviceID, content: content})
			}
		}
	}
	return out, nil
}

// syncToDevice deletes the messages the client acknowledged with since and
// returns the next ones for its device.
func (s *SyncAPI) syncToDevice(ctx context.Context, req *syncRequest, since Token, next *Token, resp *syncResponse) error {
	if since.ToDevice > s.toDeviceCleared.get(req.userID, req.deviceID) {
		// Look before deleting, so that most syncs need no write.
		var one int
		err := s.db.Reader().QueryRowContext(ctx, sqlHasAckedToDevice, req.userID, req.deviceID, since.ToDevice).Scan(&one)
		switch {
		case err == nil:
			if _, err := s.db.Writer().ExecContext(ctx, sqlDeleteAckedToDevice, req.userID, req.deviceID, since.ToDevice); err != nil {
				return err
			}
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		s.toDeviceCleared.set(req.userID, req.deviceID, since.ToDevice)
	}
	if s.heads.toDevice.Load() <= since.ToDevice {
		return nil // no message after since for anyone
	}
	rows, err := s.db.Reader().QueryContext(ctx, sqlPendingToDevice, req.userID, req.deviceID, since.ToDevice, maxToDevicePerSync)
	if err != nil {
		return err
	}
	defer rows.Close()
	size := 0
	for rows.Next() {
		var pos int64
		var sender, evType, content string
		if err := rows.Scan(&pos, &sender, &evType, &content); err != nil {
			return err
		}
		if size += len(content); size > maxToDeviceBytesPerSync && len(resp.ToDevice.Events) > 0 {
			break
		}
		resp.ToDevice.Events = append(resp.ToDevice.Events, map[string]any{
			"sender": sender, "type": evType, "content": json.RawMessage(content),
		})
		next.ToDevice = pos
	}
	return rows.Err()
}

// clearedMarks remembers, per device, a position up to which it has no
// to-device messages left: the ones up to it were acknowledged and
// deleted. New messages take higher positions (the counter only grows),
// so a mark never goes stale, and a sync acknowledging nothing newer
// needs no look at the table.
type clearedMarks struct {
	mu    sync.Mutex
	marks map[[2]string]int64
}

func (c *clearedMarks) get(userID, deviceID string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.marks[[2]string{userID, deviceID}]
}

func (c *clearedMarks) set(userID, deviceID string, pos int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.marks == nil {
		c.marks = map[[2]string]int64{}
	}
	k := [2]string{userID, deviceID}
	c.marks[k] = max(c.marks[k], pos)
}
