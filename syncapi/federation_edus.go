package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/mxid"
	"github.com/plexus-chat/plexus/storage"
)

// Ephemeral events across servers, both ways. Our users' typing, public
// read receipts, presence and send-to-device messages for remote users go
// to an EDUSender (the federation API's sender), through one-line hooks in
// typing.go, receipts.go, presence.go and todevice.go. Other servers'
// arrive through the Remote* methods (the federation API's EDUSink), land
// in the same tables and state as local ones, and wake the users who see
// them.

// EDUSender hands our users' ephemeral events to other servers.
type EDUSender interface {
	// SendTyping goes to the other servers in the room.
	SendTyping(ctx context.Context, roomID, userID string, typing bool) error
	// SendReceipt (m.read only) goes to the other servers in the room.
	SendReceipt(ctx context.Context, roomID, userID, receiptType, threadID, eventID string, ts int64) error
	// SendPresence goes to the servers sharing a room with the user;
	// statusMsg "" is none.
	SendPresence(ctx context.Context, userID, presence, statusMsg string, lastActiveAgo int64, currentlyActive bool) error
	// SendToDevice goes to the servers of the users messages are for
	// (user ID -> device ID or "*" -> content).
	SendToDevice(ctx context.Context, sender, eventType string, messages map[string]map[string]json.RawMessage) error
}

// Option configures the sync API at construction.
type Option func(*SyncAPI)

// WithEDUSender makes the sync API hand our users' EDUs to other servers.
func WithEDUSender(e EDUSender) Option { return func(s *SyncAPI) { s.edus = e } }

// remoteTypingTimeout is how long a remote user shows as typing after
// their server said so; servers repeat it while the user types.
const remoteTypingTimeout = time.Minute

// isLocal reports whether a user ID is of this server.
func (s *SyncAPI) isLocal(userID string) bool {
	id, err := mxid.ParseUserID(userID)
	return err == nil && id.Server == s.serverName
}

func (s *SyncAPI) eduLog(err error, what string) {
	if err != nil {
		logrus.WithError(err).WithField("edu", what).Warn("cannot hand an EDU to the federation sender")
	}
}

// ---- Outbound hooks ----

// federateTyping passes a local user's typing change on.
func (s *SyncAPI) federateTyping(ctx context.Context, roomID, userID string, typing bool) {
	if s.edus != nil {
		s.eduLog(s.edus.SendTyping(ctx, roomID, userID, typing), "m.typing")
	}
}

// federateReceipt passes a local user's public read receipt on; private
// receipts stay here.
func (s *SyncAPI) federateReceipt(ctx context.Context, roomID, userID, receiptType, threadID, eventID string) {
	if s.edus != nil && receiptType == receiptRead {
		s.eduLog(s.edus.SendReceipt(ctx, roomID, userID, receiptType, threadID, eventID, storage.NowMillis()), "m.receipt")
	}
}

// federatePresence passes a local user's presence change on.
func (s *SyncAPI) federatePresence(ctx context.Context, userID string) {
	if s.edus == nil {
		return
	}
	p, _, err := loadPresence(ctx, s.db.Reader(), userID)
	if err != nil {
		s.eduLog(err, "m.presence")
		return
	}
	now := storage.NowMillis()
	eff := p.effective(now)
	var ago int64
	if p.LastActiveTS > 0 {
		ago = max(0, now-p.LastActiveTS)
	}
	s.eduLog(s.edus.SendPresence(ctx, userID, eff, p.StatusMsg, ago, eff == presenceOnline), "m.presence")
}

// federateToDevice passes the messages of a send-to-device request that
// are for remote users on.
func (s *SyncAPI) federateToDevice(ctx context.Context, sender, eventType string, messages map[string]map[string]json.RawMessage) {
	if s.edus == nil {
		return
	}
	remote := map[string]map[string]json.RawMessage{}
	for userID, devices := range messages {
		if id, err := mxid.ParseUserID(userID); err == nil && id.Server != s.serverName && len(devices) > 0 {
			remote[userID] = devices
		}
	}
	if len(remote) > 0 {
		s.eduLog(s.edus.SendToDevice(ctx, sender, eventType, remote), "m.direct_to_device")
	}
}

// ---- Inbound: other servers' EDUs (federationapi.EDUSink) ----

// errLocalUser refuses EDUs about our own users from elsewhere.
var errLocalUser = errors.New("syncapi: an EDU from another server about a local user")

// RemoteTyping marks a remote user as typing in a room, or not, and wakes
// the room's members.
func (s *SyncAPI) RemoteTyping(ctx context.Context, roomID, userID string, typing bool) error {
	if s.isLocal(userID) {
		return errLocalUser
	}
	s.typing.set(roomID, userID, typing, remoteTypingTimeout)
	return nil
}

// RemoteReceipt stores a remote user's read receipt with its timestamp
// and wakes the room's members.
func (s *SyncAPI) RemoteReceipt(ctx context.Context, roomID, userID, receiptType, threadID, eventID string, ts int64) error {
	if s.isLocal(userID) {
		return errLocalUser
	}
	if receiptType != receiptRead {
		return fmt.Errorf("syncapi: receipt type %q does not cross servers", receiptType)
	}
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
		if _, err := tx.ExecContext(ctx, sqlUpsertReceipt, roomID, userID, receiptType, threadID, eventID, ts, pos); err != nil {
			return err
		}
		changed = true
		return nil
	})
	if err != nil || !changed {
		return err
	}
	s.wakeRoom(roomID)
	return nil
}

// RemotePresence stores a remote user's presence as their server reports
// it, for users who share a room with one of ours, and wakes those who
// see it. The user counts as seen now, so that they read as offline if
// their server stays silent for offlineAfter.
func (s *SyncAPI) RemotePresence(ctx context.Context, userID, presence string, statusMsg *string, lastActiveAgo int64, currentlyActive bool) error {
	if s.isLocal(userID) {
		return errLocalUser
	}
	shared, err := s.sharesRoomWithLocalUser(ctx, userID)
	if err != nil || !shared {
		return err
	}
	now := storage.NowMillis()
	changed := false
	err = s.db.WithTx(ctx, func(tx *sql.Tx) error {
		old, found, err := loadPresence(ctx, tx, userID)
		if err != nil {
			return err
		}
		next := presenceState{Presence: presence, StatusMsg: old.StatusMsg, LastActiveTS: now - lastActiveAgo, LastSeenTS: now, Pos: old.Pos}
		if currentlyActive {
			next.LastActiveTS = now
		}
		if statusMsg != nil {
			next.StatusMsg = *statusMsg
		} else {
			next.StatusMsg = "" // an update without a message has none
		}
		changed = !found || old.effective(now) != next.effective(now) || old.StatusMsg != next.StatusMsg
		if changed {
			if next.Pos, err = s.reservePositions(ctx, tx, streamPresence, 1); err != nil {
				return err
			}
		}
		var msg *string
		if next.StatusMsg != "" {
			msg = &next.StatusMsg
		}
		_, err = tx.ExecContext(ctx, sqlUpsertPresence, userID, next.Presence, msg, next.LastActiveTS, next.LastSeenTS, next.Pos)
		return err
	})
	if err != nil || !changed {
		return err
	}
	return s.wakeRoomPeers(ctx, userID)
}

// sharesRoomWithLocalUser reports whether a user is joined to a room one
// of our users is joined to.
func (s *SyncAPI) sharesRoomWithLocalUser(ctx context.Context, userID string) (bool, error) {
	rows, err := s.db.Reader().QueryContext(ctx, sqlRoomPeers, userID)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	suffix := ":" + s.serverName
	for rows.Next() {
		var peer string
		if err := rows.Scan(&peer); err != nil {
			return false, err
		}
		if strings.HasSuffix(peer, suffix) && s.isLocal(peer) {
			return true, nil
		}
	}
	return false, rows.Err()
}

// RemoteToDevice delivers a remote user's send-to-device messages to our
// users' devices ("*" is all of a user's devices), once per sender and
// message ID: the ID is remembered for toDeviceTxnRetention in the table
// that makes local sends idempotent, under the remote sender with an
// empty device ID (a local device always has one).
func (s *SyncAPI) RemoteToDevice(ctx context.Context, sender, eventType, messageID string, messages map[string]map[string]json.RawMessage) error {
	if s.isLocal(sender) {
		return errLocalUser
	}
	log := logrus.WithFields(logrus.Fields{"sender": sender, "message_id": messageID})
	msgs, err := s.toDeviceRecipients(ctx, log, messages)
	if err != nil {
		return err
	}
	if len(msgs) > maxToDeviceMessages {
		return fmt.Errorf("syncapi: %d to-device messages in one EDU (at most %d)", len(msgs), maxToDeviceMessages)
	}
	const federationDevice = ""
	repeated := false
	err = s.db.WithTx(ctx, func(tx *sql.Tx) error {
		now := storage.NowMillis()
		res, err := tx.ExecContext(ctx, sqlInsertToDeviceTxn, sender, federationDevice, messageID, now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			repeated = true
			return nil
		}
		if _, err := tx.ExecContext(ctx, sqlPruneToDeviceTxns, sender, federationDevice, now-toDeviceTxnRetention.Milliseconds()); err != nil {
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
			if _, err := tx.ExecContext(ctx, sqlInsertToDevice, first+int64(i), m.userID, m.deviceID, sender, eventType, string(m.content)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || repeated {
		return err
	}
	woken := map[string]bool{}
	for _, m := range msgs {
		if !woken[m.userID] {
			woken[m.userID] = true
			s.notifier.wake(m.userID)
		}
	}
	return nil
}
