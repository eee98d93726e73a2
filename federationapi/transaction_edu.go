package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// EDUs of inbound transactions. Each is about users of the origin only
// (others in it are ignored), and typing and receipts only about rooms
// whose server ACL allows the origin and where those users are joined.
// A bad EDU is skipped: EDUs have no results to report.

// Bounds of one EDU.
const (
	maxEDUEntries    = 1000 // receipts, presence updates, to-device messages
	maxStatusMsg     = 1024
	maxEDUStringSize = 255 // event types, message IDs, IDs
)

// processEDUs hands a transaction's EDUs to the sync API.
func (h *TransactionHandler) processEDUs(ctx context.Context, origin spec.ServerName, raws []json.RawMessage) {
	for _, raw := range raws {
		var edu struct {
			Type    string          `json:"edu_type"`
			Content json.RawMessage `json:"content"`
		}
		if err := json.Unmarshal(raw, &edu); err != nil {
			h.log.WithField("origin", origin).Debug("skipped an EDU that is not an object")
			continue
		}
		var err error
		switch edu.Type {
		case "m.typing":
			err = h.typingEDU(ctx, origin, edu.Content)
		case "m.receipt":
			err = h.receiptEDU(ctx, origin, edu.Content)
		case "m.presence":
			err = h.presenceEDU(ctx, origin, edu.Content)
		case "m.direct_to_device":
			err = h.toDeviceEDU(ctx, origin, edu.Content)
		case "m.device_list_update", "m.signing_key_update":
			err = h.keyEDU(ctx, origin, edu.Type, edu.Content)
		default:
			continue // unknown EDU types are ignored
		}
		if err != nil {
			h.log.WithError(err).WithFields(logrus.Fields{"origin": origin, "edu_type": edu.Type}).Info("skipped an EDU")
		}
	}
}

// splitKeyEDUs puts m.device_list_update and m.signing_key_update apart
// from the other EDUs.
func splitKeyEDUs(raws []json.RawMessage) (others, keys []json.RawMessage) {
	for _, raw := range raws {
		switch gjson.GetBytes(raw, "edu_type").Str {
		case "m.device_list_update", "m.signing_key_update":
			keys = append(keys, raw)
		default:
			others = append(others, raw)
		}
	}
	return others, keys
}

// errSkip marks an EDU (or part of one) that breaks the rules.
var errSkip = errors.New("not acceptable")

// roomMember reports whether a user of the origin may speak for a room:
// the room's server ACL allows the origin and the user is joined.
func (h *TransactionHandler) roomMember(ctx context.Context, origin spec.ServerName, roomID, userID string) (bool, error) {
	if userServerName(userID) != origin || !validRoomIDForTxn(roomID) || !validText(roomID) || !validText(userID) {
		return false, nil
	}
	allowed, err := h.rs.ServerACLAllows(ctx, roomID, string(origin))
	if errors.Is(err, rsapi.ErrRoomNotFound) || (err == nil && !allowed) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	m, err := h.rs.Membership(ctx, roomID, userID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return false, nil
	}
	return err == nil && m.Membership == spec.Join, err
}

func (h *TransactionHandler) typingEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		RoomID string `json:"room_id"`
		UserID string `json:"user_id"`
		Typing *bool  `json:"typing"`
	}
	if err := json.Unmarshal(content, &c); err != nil || c.Typing == nil {
		return errSkip
	}
	ok, err := h.roomMember(ctx, origin, c.RoomID, c.UserID)
	if err != nil || !ok {
		return orSkip(err)
	}
	return h.edus.RemoteTyping(ctx, c.RoomID, c.UserID, *c.Typing)
}

func orSkip(err error) error {
	if err != nil {
		return err
	}
	return errSkip
}

// receiptEDU takes read receipts: room ID -> receipt type -> user ID ->
// {event_ids, data: {ts, thread_id}}. Only m.read crosses servers
// (m.read.private never does).
func (h *TransactionHandler) receiptEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var rooms map[string]map[string]map[string]struct {
		EventIDs []string `json:"event_ids"`
		Data     struct {
			TS       *int64 `json:"ts"`
			ThreadID string `json:"thread_id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(content, &rooms); err != nil {
		return errSkip
	}
	n := 0
	for roomID, types := range rooms {
		for receiptType, users := range types {
			if receiptType != "m.read" {
				continue
			}
			for userID, r := range users {
				if n++; n > maxEDUEntries {
					return errSkip
				}
				if len(r.EventIDs) == 0 || !validEventIDForTxn(r.EventIDs[0]) || !validThreadID(r.Data.ThreadID) {
					continue
				}
				ok, err := h.roomMember(ctx, origin, roomID, userID)
				if err != nil {
					return err
				}
				if !ok {
					continue
				}
				ts := storage.NowMillis()
				if r.Data.TS != nil && *r.Data.TS > 0 {
					ts = *r.Data.TS
				}
				if err := h.edus.RemoteReceipt(ctx, roomID, userID, receiptType, r.Data.ThreadID, r.EventIDs[0], ts); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func validEventIDForTxn(id string) bool {
	return strings.HasPrefix(id, "$") && len(id) > 1 && len(id) <= maxEDUStringSize && validText(id)
}

// validThreadID: unthreaded (""), "main" or a thread root's event ID.
func validThreadID(id string) bool {
	return id == "" || id == "main" || validEventIDForTxn(id)
}

// validText is text both databases store: UTF-8 without NUL.
func validText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

func (h *TransactionHandler) presenceEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		Push []struct {
			UserID          string  `json:"user_id"`
			Presence        string  `json:"presence"`
			StatusMsg       *string `json:"status_msg"`
			LastActiveAgo   int64   `json:"last_active_ago"`
			CurrentlyActive bool    `json:"currently_active"`
		} `json:"push"`
	}
	if err := json.Unmarshal(content, &c); err != nil || len(c.Push) > maxEDUEntries {
		return errSkip
	}
	for _, p := range c.Push {
		if userServerName(p.UserID) != origin || len(p.UserID) > maxEDUStringSize || !validText(p.UserID) {
			continue
		}
		switch p.Presence {
		case "online", "unavailable", "offline":
		default:
			continue
		}
		if p.StatusMsg != nil && (len(*p.StatusMsg) > maxStatusMsg || !validText(*p.StatusMsg)) {
			continue
		}
		if err := h.edus.RemotePresence(ctx, p.UserID, p.Presence, p.StatusMsg, max(0, p.LastActiveAgo), p.CurrentlyActive); err != nil {
			return err
		}
	}
	return nil
}

// toDeviceEDU delivers send-to-device messages to our users; the sync API
// makes a message ID count once per sender.
func (h *TransactionHandler) toDeviceEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		Sender    string                                `json:"sender"`
		Type      string                                `json:"type"`
		MessageID string                                `json:"message_id"`
		Messages  map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return errSkip
	}
	if userServerName(c.Sender) != origin || len(c.Sender) > maxEDUStringSize || !validText(c.Sender) ||
		c.Type == "" || len(c.Type) > maxEDUStringSize || !validText(c.Type) ||
		c.MessageID == "" || len(c.MessageID) > maxEDUStringSize || !validText(c.MessageID) {
		return errSkip
	}
	ours := map[string]map[string]json.RawMessage{}
	n := 0
	for userID, devices := range c.Messages {
		if userServerName(userID) != h.self {
			continue
		}
		for deviceID, msg := range devices {
			if n++; n > maxEDUEntries {
				return errSkip
			}
			if m := strings.TrimSpace(string(msg)); !strings.HasPrefix(m, "{") || len(deviceID) > maxEDUStringSize {
				return errSkip
			}
		}
		ours[userID] = devices
	}
	if len(ours) == 0 {
		return nil
	}
	return h.edus.RemoteToDevice(ctx, c.Sender, c.Type, c.MessageID, ours)
}

// keyEDU passes device list and cross-signing key updates of the origin's
// users to the key server (through KeyUpdateSink; without one they are
// accepted and ignored).
func (h *TransactionHandler) keyEDU(ctx context.Context, origin spec.ServerName, eduType string, content json.RawMessage) error {
	var c struct {
		UserID string `json:"user_id"`
	}
	if err := json.Unmarshal(content, &c); err != nil || userServerName(c.UserID) != origin {
		return errSkip
	}
	if h.keys == nil {
		return nil
	}
	if eduType == "m.device_list_update" {
		return h.keys.RemoteDeviceListUpdate(ctx, origin, content)
	}
	return h.keys.RemoteSigningKeyUpdate(ctx, origin, content)
}
