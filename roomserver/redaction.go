package roomserver

import (
	"context"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// checkRedaction refuses a local user's redaction of someone else's event
// without the power to redact. (The auth rules of most room versions check
// this only when the redaction is applied; a local user should hear no at
// once instead.)
func (r *Roomserver) checkRedaction(ctx context.Context, q storage.Querier, rm *room, redaction gomatrixserverlib.PDU) error {
	target, err := r.eventByID(ctx, q, redaction.Redacts())
	if errors.Is(err, api.ErrEventNotFound) {
		return nil // nothing to redact: harmless
	}
	if err != nil {
		return err
	}
	if target.pdu.RoomID().String() != rm.id {
		return api.BadEventf("the event to redact is in another room")
	}
	if target.pdu.SenderID() == redaction.SenderID() {
		return nil
	}
	ok, err := r.canRedactOthers(ctx, q, rm, redaction.SenderID())
	if err != nil {
		return err
	}
	if !ok {
		return &api.NotAllowedError{Reason: "You don't have permission to redact other users' events"}
	}
	return nil
}

// canRedactOthers reports whether the user's power level reaches the
// room's redact level at the current state.
func (r *Roomserver) canRedactOthers(ctx context.Context, q storage.Querier, rm *room, sender spec.SenderID) (bool, error) {
	evs, err := r.stateEventsFor(ctx, q, rm.snapshot, []gomatrixserverlib.StateKeyTuple{
		{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels},
	})
	if err != nil {
		return false, err
	}
	var create, pl gomatrixserverlib.PDU
	for _, ev := range evs {
		switch ev.Type() {
		case spec.MRoomCreate:
			create = ev
		case spec.MRoomPowerLevels:
			pl = ev
		}
	}
	if create != nil && rm.verImpl.PrivilegedCreators() && isCreator(create, sender) {
		return true, nil
	}
	if pl == nil {
		// Without power levels the creator has 100 and everyone else 0;
		// the default redact level is 50.
		return create != nil && create.SenderID() == sender, nil
	}
	levels, err := pl.PowerLevels()
	if err != nil {
		return false, err
	}
	return levels.UserLevel(sender) >= levels.Redact, nil
}

// isCreator reports whether sender is one of the room's creators (v12).
func isCreator(create gomatrixserverlib.PDU, sender spec.SenderID) bool {
	if create.SenderID() == sender {
		return true
	}
	for _, c := range gjson.GetBytes(create.Content(), "additional_creators").Array() {
		if c.String() == string(sender) {
			return true
		}
	}
	return false
}

// applyRedaction strips the target event to what its room version keeps
// and records the redaction in its unsigned data, so that every later read
// serves the redacted form. Redactions the rules do not honour (another
// server's user without power) are stored but change nothing.
func (r *Roomserver) applyRedaction(ctx context.Context, t *txn, rm *room, redaction gomatrixserverlib.PDU) error {
	target, err := r.eventByID(ctx, t, redaction.Redacts())
	if errors.Is(err, api.ErrEventNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if target.pdu.RoomID().String() != rm.id || target.pdu.Redacted() {
		return nil
	}
	if target.pdu.SenderID() != redaction.SenderID() && !sameDomain(target.pdu.SenderID(), redaction.SenderID()) {
		ok, err := r.canRedactOthers(ctx, t.Tx, rm, redaction.SenderID())
		if err != nil || !ok {
			return err
		}
	}
	redacted, err := rm.verImpl.RedactEventJSON(target.pdu.JSON())
	if err != nil {
		return err
	}
	because := gjson.ParseBytes(redaction.JSON()).Value()
	if redacted, err = sjson.SetBytes(redacted, "unsigned.redacted_because", because); err != nil {
		return err
	}
	_, err = t.ExecContext(ctx, sqlRedactEvent, target.nid, redaction.EventID(), string(redacted))
	return err
}

func sameDomain(a, b spec.SenderID) bool {
	ua, err1 := spec.NewUserID(string(a), true)
	ub, err2 := spec.NewUserID(string(b), true)
	return err1 == nil && err2 == nil && ua.Domain() == ub.Domain()
}
