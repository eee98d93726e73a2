package roomserver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/roomserver/api"
)

// Limits the spec sets on events.
const (
	maxEventSize  = 65536 // bytes of canonical JSON, signatures included
	maxFieldBytes = 255   // type, state_key, sender, room_id
	// maxPrevEvents bounds how many forward extremities a new local event
	// merges; the rest are merged by later events.
	maxPrevEvents = 10
)

// buildEvent builds and signs a local event at the room's current state:
// its prev_events are the forward extremities and its auth_events the
// state the auth rules need. It then checks the event against the auth
// rules with those same events (the state it was built on), and returns
// an *api.NotAllowedError when they refuse it.
func (r *Roomserver) buildEvent(ctx context.Context, tx *sql.Tx, rm *room, ev api.NewEvent) (gomatrixserverlib.PDU, error) {
	if err := checkFields(ev); err != nil {
		return nil, err
	}
	proto := gomatrixserverlib.ProtoEvent{
		SenderID: ev.Sender,
		RoomID:   rm.id,
		Type:     ev.Type,
		StateKey: ev.StateKey,
		Content:  spec.RawJSON(ev.Content),
		Redacts:  ev.Redacts,
	}
	if len(proto.Content) == 0 {
		proto.Content = spec.RawJSON("{}")
	}
	if ev.Type == spec.MRoomRedaction && ev.Redacts != "" && redactsInContent(rm.version) {
		// From room version 11 the target is named in the content.
		c, err := sjson.SetBytes(proto.Content, "redacts", ev.Redacts)
		if err != nil {
			return nil, api.BadEventf("content must be an object")
		}
		proto.Content = c
	}
	extremities, err := r.extremities(ctx, tx, rm.nid)
	if err != nil {
		return nil, err
	}
	var prevs []string
	var depth int64
	for i, x := range extremities {
		if i == maxPrevEvents {
			break
		}
		prevs = append(prevs, x.eventID)
		depth = max(depth, x.depth+1)
	}
	proto.PrevEvents = prevs
	proto.Depth = depth

	needed, err := gomatrixserverlib.StateNeededForProtoEvent(&proto)
	if err != nil {
		return nil, api.BadEventf("%v", err)
	}
	authEvents, err := r.stateEventsFor(ctx, tx, rm.snapshot, needed.Tuples())
	if err != nil {
		return nil, err
	}
	var authIDs []string
	for _, a := range authEvents {
		// Room version 12 names the create event by the room ID instead.
		if a.Type() == spec.MRoomCreate && rm.verImpl.DomainlessRoomIDs() {
			continue
		}
		authIDs = append(authIDs, a.EventID())
	}
	proto.AuthEvents = authIDs
	pdu, err := r.sign(rm.verImpl, &proto)
	if err != nil {
		return nil, err
	}
	if err := allowed(pdu, authEvents); err != nil {
		return nil, err
	}
	return pdu, nil
}

func (r *Roomserver) sign(verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent) (gomatrixserverlib.PDU, error) {
	return r.signAt(verImpl, proto, time.Now())
}

func (r *Roomserver) signAt(verImpl gomatrixserverlib.IRoomVersion, proto *gomatrixserverlib.ProtoEvent, ts time.Time) (gomatrixserverlib.PDU, error) {
	pdu, err := verImpl.NewEventBuilderFromProtoEvent(proto).Build(ts, r.serverName, r.keyID, r.privateKey)
	var verr gomatrixserverlib.EventValidationError
	if errors.As(err, &verr) && verr.Code == gomatrixserverlib.EventValidationTooLarge {
		return nil, &api.TooLargeError{Reason: verr.Message}
	}
	if err != nil {
		return nil, api.BadEventf("%v", err)
	}
	if len(pdu.JSON()) > maxEventSize {
		return nil, &api.TooLargeError{Reason: "event is larger than 65536 bytes"}
	}
	return pdu, nil
}

func redactsInContent(v gomatrixserverlib.RoomVersion) bool {
	switch v {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10:
		return false
	}
	return true
}

func checkFields(ev api.NewEvent) error {
	if ev.Type == "" {
		return api.BadEventf("event type is empty")
	}
	if len(ev.Type) > maxFieldBytes {
		return &api.TooLargeError{Reason: "event type is longer than 255 bytes"}
	}
	if ev.StateKey != nil && len(*ev.StateKey) > maxFieldBytes {
		return &api.TooLargeError{Reason: "state key is longer than 255 bytes"}
	}
	if len(ev.Sender) > maxFieldBytes {
		return &api.TooLargeError{Reason: "sender is longer than 255 bytes"}
	}
	if len(ev.Content) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(ev.Content, &obj); err != nil {
			return api.BadEventf("content must be a JSON object")
		}
	}
	return nil
}

// SendEvent builds a local user's event at the room's current state,
// checks it against the auth rules and stores it.
func (r *Roomserver) SendEvent(ctx context.Context, ev api.NewEvent) (gomatrixserverlib.PDU, error) {
	unlock := r.lockRoom(ev.RoomID)
	defer unlock()
	var pdu gomatrixserverlib.PDU
	err := r.inTx(ctx, func(t *txn) error {
		rm, err := r.loadRoom(ctx, t, ev.RoomID)
		if err != nil {
			return err
		}
		if ev.TxnID != "" {
			var eventID string
			err := t.QueryRowContext(ctx, sqlSelectTxn, ev.Sender, ev.DeviceID, ev.TxnID).Scan(&eventID)
			if err == nil {
				// A retransmission: answer with the first event.
				prev, err := r.eventByID(ctx, t, eventID)
				if err != nil {
					return err
				}
				pdu = prev.pdu
				return nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		pdu, err = r.sendLocal(ctx, t, rm, ev)
		return err
	})
	if err != nil {
		return nil, err
	}
	return pdu, nil
}

// sendLocal builds, checks and stores one local event. A local event the
// auth rules refuse is not stored: the user gets the reason instead.
func (r *Roomserver) sendLocal(ctx context.Context, t *txn, rm *room, ev api.NewEvent) (gomatrixserverlib.PDU, error) {
	if same, err := r.unchangedState(ctx, t, rm, ev); err != nil || same != nil {
		return same, err
	}
	pdu, err := r.buildEvent(ctx, t.Tx, rm, ev)
	if err != nil {
		return nil, err
	}
	if pdu.Type() == spec.MRoomRedaction {
		if err := r.checkRedaction(ctx, t.Tx, rm, pdu); err != nil {
			return nil, err
		}
	}
	authed := rm.snapshot
	res, err := r.inputEvent(ctx, t, rm, pdu, inputOpts{local: true, authedAt: &authed})
	if err != nil {
		return nil, err
	}
	if ev.TxnID != "" {
		if _, err := t.ExecContext(ctx, sqlInsertTxn, ev.Sender, ev.DeviceID, ev.TxnID, res.nid); err != nil {
			return nil, err
		}
		t.setOutputTxn(pdu.EventID(), ev.TxnID, ev.DeviceID)
	}
	return pdu, nil
}

// unchangedState returns the current state event when ev would replace it
// with the same content from the same sender: setting state twice is
// idempotent rather than a new event.
func (r *Roomserver) unchangedState(ctx context.Context, t *txn, rm *room, ev api.NewEvent) (gomatrixserverlib.PDU, error) {
	if ev.StateKey == nil || rm.snapshot == 0 {
		return nil, nil
	}
	cur, err := r.stateEventsFor(ctx, t.Tx, rm.snapshot, []gomatrixserverlib.StateKeyTuple{{EventType: ev.Type, StateKey: *ev.StateKey}})
	if err != nil || len(cur) == 0 || string(cur[0].SenderID()) != ev.Sender {
		return nil, err
	}
	content := ev.Content
	if len(content) == 0 {
		content = json.RawMessage("{}")
	}
	a, err1 := gomatrixserverlib.CanonicalJSON(content)
	b, err2 := gomatrixserverlib.CanonicalJSON(cur[0].Content())
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		return nil, nil
	}
	return cur[0], nil
}
