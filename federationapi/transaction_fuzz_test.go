package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/sirupsen/logrus"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// fuzzRooms is a roomserver with one room, "!r:origin.test" (version 10),
// where everyone is joined and nothing can be stored.
type fuzzRooms struct{}

var errFuzzNoInput = errors.New("no input in fuzzing")

func (fuzzRooms) InputRemoteEvent(context.Context, gomatrixserverlib.PDU) (rsapi.InputResult, error) {
	return rsapi.InputResult{}, errFuzzNoInput
}
func (fuzzRooms) InputOutliers(context.Context, []gomatrixserverlib.PDU) error { return errFuzzNoInput }
func (fuzzRooms) InputEventWithState(context.Context, gomatrixserverlib.PDU, []gomatrixserverlib.PDU) (rsapi.InputResult, error) {
	return rsapi.InputResult{}, errFuzzNoInput
}
func (fuzzRooms) InputRejectedEvent(context.Context, gomatrixserverlib.PDU, string) error {
	return errFuzzNoInput
}
func (fuzzRooms) MissingPrevEvents(context.Context, gomatrixserverlib.PDU) ([]string, error) {
	return nil, nil
}
func (fuzzRooms) ResidentServers(context.Context, string) ([]string, error) { return nil, nil }
func (fuzzRooms) InputOutOfBandMembership(context.Context, gomatrixserverlib.PDU) error {
	return errFuzzNoInput
}
func (fuzzRooms) ForwardExtremities(context.Context, string) ([]string, error) { return nil, nil }
func (fuzzRooms) StoredEvents(context.Context, []string) (map[string]gomatrixserverlib.PDU, error) {
	return map[string]gomatrixserverlib.PDU{}, nil
}
func (fuzzRooms) CheckAuthEvents(context.Context, gomatrixserverlib.PDU) ([]string, error) {
	return nil, nil
}
func (fuzzRooms) RoomVersion(_ context.Context, roomID string) (gomatrixserverlib.RoomVersion, error) {
	if roomID == "!r:origin.test" {
		return gomatrixserverlib.RoomVersionV10, nil
	}
	return "", rsapi.ErrRoomNotFound
}
func (fuzzRooms) Membership(_ context.Context, roomID, userID string) (rsapi.Membership, error) {
	return rsapi.Membership{RoomID: roomID, UserID: userID, Membership: "join"}, nil
}
func (fuzzRooms) ServerACLAllows(context.Context, string, string) (bool, error) { return true, nil }

// fuzzSink fails the fuzzing when handed something about a user of
// another server than the origin.
type fuzzSink struct{ t *testing.T }

func (s fuzzSink) check(userID string) {
	if !strings.HasSuffix(userID, ":origin.test") || strings.Count(userID, ":") != 1 {
		s.t.Fatalf("the sink got an EDU about %q from origin.test", userID)
	}
}
func (s fuzzSink) RemoteTyping(_ context.Context, _, userID string, _ bool) error {
	s.check(userID)
	return nil
}
func (s fuzzSink) RemoteReceipt(_ context.Context, _, userID, _, _, _ string, _ int64) error {
	s.check(userID)
	return nil
}
func (s fuzzSink) RemotePresence(_ context.Context, userID, _ string, _ *string, _ int64, _ bool) error {
	s.check(userID)
	return nil
}
func (s fuzzSink) RemoteToDevice(_ context.Context, sender, _, _ string, messages map[string]map[string]json.RawMessage) error {
	s.check(sender)
	for u := range messages {
		if !strings.HasSuffix(u, ":self.test") {
			s.t.Fatalf("to-device for %q handed to the sink of self.test", u)
		}
	}
	return nil
}

// FuzzInboundTransaction feeds transaction bodies through the parsing and
// the EDU handling: no panic, and only the origin's users reach the sink.
func FuzzInboundTransaction(f *testing.F) {
	f.Add([]byte(`{"pdus":[{"room_id":"!r:origin.test","type":"m.room.message"}],"edus":[{"edu_type":"m.typing","content":{"room_id":"!r:origin.test","user_id":"@a:origin.test","typing":true}}]}`))
	f.Add([]byte(`{"edus":[{"edu_type":"m.receipt","content":{"!r:origin.test":{"m.read":{"@a:origin.test":{"event_ids":["$e"],"data":{"ts":1}},"@b:evil.test":{"event_ids":["$e"]}}}}}]}`))
	f.Add([]byte(`{"edus":[{"edu_type":"m.presence","content":{"push":[{"user_id":"@a:origin.test","presence":"online","last_active_ago":-5}]}}]}`))
	f.Add([]byte(`{"edus":[{"edu_type":"m.direct_to_device","content":{"sender":"@a:origin.test","type":"t","message_id":"m","messages":{"@u:self.test":{"*":{}},"@v:else.test":{"D":{}}}}}]}`))
	f.Add([]byte(`{"pdus":[{"room_id":"!nope:x","event_id":"$x"},7,"s",null],"edus":[1,{"edu_type":"m.device_list_update","content":[]}]}`))
	log := logrus.New()
	log.SetOutput(io.Discard)
	f.Fuzz(func(t *testing.T, body []byte) {
		var txn inboundTxn
		if json.Unmarshal(body, &txn) != nil || len(txn.PDUs) > maxInboundPDUs || len(txn.EDUs) > maxInboundEDUs {
			return
		}
		h := &TransactionHandler{self: "self.test", rs: fuzzRooms{}, edus: fuzzSink{t}, log: logrus.NewEntry(log), budget: txnBudget}
		ctx := context.Background()
		for _, raw := range txn.PDUs {
			_ = h.parsePDU(ctx, raw)
		}
		h.processEDUs(ctx, "origin.test", txn.EDUs)
	})
}
