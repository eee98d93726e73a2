package federationapi

import (
	"context"
	"errors"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// The checks the spec makes on every PDU received (server-server API,
// "Checks performed on receipt of a PDU"), in its order:
//
//  1. a valid event of the room's version (parsePDU; a PDU for a room we
//     are not in is refused), sent by the origin: the sender's server must
//     be the origin, except for the membership events that a resident
//     server passes on for another server after a handshake (join, leave,
//     knock) and invites; and a room whose server ACL denies the origin
//     refuses everything it sends;
//  2. signatures (gomatrixserverlib.VerifyEventSignatures with the key
//     ring): failing, the PDU is refused;
//  3. the content hash (NewEventFromUntrustedJSON): failing, the event is
//     redacted and goes on in that form;
//  4. the auth rules at the event's auth events (the roomserver's
//     CheckAuthEvents; missing auth events are fetched from the origin's
//     /event_auth first);
//  5. and 6. the auth rules at the state before the event and at the
//     current state (the roomserver's InputRemoteEvent: rejected, or soft
//     failed).
//
// An event whose prev events we lack is a gap, filled before the checks
// at its auth events (transaction_gap.go).

// Bounds of gap filling.
const (
	// missingEventsLimit is the limit asked of /get_missing_events.
	missingEventsLimit = 20
	// maxStateEvents bounds the state and auth chain of one fetched state.
	maxStateEvents = 10000
	// maxSingleFetches is how many lacking events are fetched one by one
	// (/event); more and the whole state is fetched at once (/state).
	maxSingleFetches = 50
	// fetchWorkers bounds the /event requests in flight for one event.
	fetchWorkers = 8
	// maxEdgeStateFetches bounds the state fetches for the events
	// /get_missing_events gives whose prev events we still lack.
	maxEdgeStateFetches = 2
)

// processPDU checks a PDU of the origin's and inputs it.
func (h *TransactionHandler) processPDU(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU, gaps *gapBudget) error {
	roomID := pdu.RoomID().String()
	allowed, err := h.rs.ServerACLAllows(ctx, roomID, string(origin))
	if err != nil {
		return h.outcome(rsapi.InputResult{}, err, pdu)
	}
	if !allowed {
		return pduErrorf("The room's server ACL denies %s", origin)
	}
	if err := checkOrigin(origin, pdu); err != nil {
		return err
	}
	if err := h.verify(ctx, pdu); err != nil {
		return err
	}
	if handled, err := h.outOfBandEnd(ctx, origin, pdu); handled {
		return err
	}
	return h.input(ctx, origin, pdu, gaps)
}

// checkOrigin refuses an event whose sender is not a user of the origin,
// unless it is a membership event the origin may pass on for another
// server: the join, leave or knock a resident server takes through
// /send_join, /send_leave or /send_knock (the spec makes it pass them on to
// the room), or an invite.
func checkOrigin(origin spec.ServerName, pdu gomatrixserverlib.PDU) error {
	sender := userServerName(string(pdu.SenderID()))
	if sender == origin {
		return nil
	}
	if pdu.Type() == spec.MRoomMember && pdu.StateKey() != nil {
		switch m, _ := pdu.Membership(); m {
		case spec.Join, spec.Leave, spec.Knock, spec.Invite:
			return nil
		}
	}
	return pduErrorf("The sender %s is not a user of the origin %s", pdu.SenderID(), origin)
}

// verify checks an event's signatures with the key ring.
func (h *TransactionHandler) verify(ctx context.Context, pdu gomatrixserverlib.PDU) error {
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, pdu, h.keyRing, txnUserIDForSender); err != nil {
		return pduErrorf("Signature check failed: %v", err)
	}
	return nil
}

// txnUserIDForSender maps sender IDs to user IDs: the same in every room
// version this server supports.
func txnUserIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// input hands an event to the roomserver: when we lack its prev events,
// the gap before it is filled first (the events and state that brings
// may hold auth events we lack too), then it is checked at its auth
// events and stored.
func (h *TransactionHandler) input(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU, gaps *gapBudget) error {
	missing, err := h.rs.MissingPrevEvents(ctx, pdu)
	if err != nil {
		return h.outcome(rsapi.InputResult{}, err, pdu)
	}
	if len(missing) > 0 {
		if !gaps.take() {
			return pduErrorf("Missing prev events %v, and this transaction fetched enough already", missing)
		}
		return h.fillGap(ctx, origin, pdu)
	}
	return h.inputAtPrevEvents(ctx, origin, pdu)
}

// inputAtPrevEvents checks an event whose prev events we have at its auth
// events and stores it at the state after them.
func (h *TransactionHandler) inputAtPrevEvents(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) error {
	if err := h.checkAuthEvents(ctx, origin, pdu); err != nil {
		return err
	}
	res, err := h.rs.InputRemoteEvent(ctx, pdu)
	return h.outcome(res, err, pdu)
}

// outcome turns the roomserver's answer into the PDU's result.
func (h *TransactionHandler) outcome(res rsapi.InputResult, err error, pdu gomatrixserverlib.PDU) error {
	var (
		pe      *pduError
		na      *rsapi.NotAllowedError
		bad     *rsapi.BadEventError
		large   *rsapi.TooLargeError
		missing *rsapi.MissingPrevEventsError
	)
	switch {
	case err == nil && res.Status == rsapi.InputRejected:
		return pduErrorf("Rejected by the auth rules: %s", res.Reason)
	case err == nil:
		return nil // accepted, or soft failed (kept, not served)
	case errors.As(err, &pe):
		return err
	case errors.As(err, &na):
		return pduErrorf("Rejected by the auth rules: %s", na.Reason)
	case errors.As(err, &bad):
		return pduErrorf("Invalid event: %s", bad.Reason)
	case errors.As(err, &large):
		return pduErrorf("Invalid event: %s", large.Reason)
	case errors.As(err, &missing):
		return pduErrorf("Missing prev events %v", missing.EventIDs)
	case errors.Is(err, rsapi.ErrRoomNotFound):
		return pduErrorf("This server is not in the room")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return pduErrorf("Timed out")
	}
	h.log.WithError(err).WithField("event_id", pdu.EventID()).Error("processing a PDU failed")
	return pduErrorf("Internal error")
}

// checkAuthEvents applies the auth rules at the event's auth events,
// fetching those we lack from the origin first. An event they refuse is
// stored as rejected, so that later events citing it as a prev event are
// not held up by a gap (the spec lets them through if they pass the
// auth rules themselves).
func (h *TransactionHandler) checkAuthEvents(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) error {
	missing, err := h.rs.CheckAuthEvents(ctx, pdu)
	if err == nil && len(missing) > 0 {
		if err := h.fetchAuthChain(ctx, origin, pdu); err != nil {
			return err
		}
		missing, err = h.rs.CheckAuthEvents(ctx, pdu)
		if err == nil && len(missing) > 0 {
			return pduErrorf("Missing auth events %v", missing)
		}
	}
	var na *rsapi.NotAllowedError
	if errors.As(err, &na) {
		if serr := h.rs.InputRejectedEvent(ctx, pdu, na.Reason); serr != nil {
			h.log.WithError(serr).WithField("event_id", pdu.EventID()).Warn("storing a rejected event failed")
		}
	}
	return h.outcome(rsapi.InputResult{}, err, pdu)
}

// fetchAuthChain asks the origin for an event's auth chain and stores
// the events of it we lack as outliers.
func (h *TransactionHandler) fetchAuthChain(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) error {
	roomID := pdu.RoomID().String()
	resp, err := h.client.GetEventAuth(ctx, h.self, origin, pdu.Version(), roomID, pdu.EventID())
	if err != nil {
		return pduErrorf("Missing auth events, and %s did not give them: %v", origin, err)
	}
	if len(resp.AuthEvents) > maxStateEvents {
		return pduErrorf("The auth chain has more than %d events", maxStateEvents)
	}
	events, err := h.verifyEvents(ctx, roomID, pdu.Version(), resp.AuthEvents, nil)
	if err != nil {
		return err
	}
	return h.storeOutliers(ctx, events)
}

// storeOutliers stores the events we lack as outliers.
func (h *TransactionHandler) storeOutliers(ctx context.Context, events []gomatrixserverlib.PDU) error {
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.EventID()
	}
	stored, err := h.rs.StoredEvents(ctx, ids)
	if err != nil {
		return err
	}
	lacking := slices.DeleteFunc(slices.Clone(events), func(ev gomatrixserverlib.PDU) bool { return stored[ev.EventID()] != nil })
	if err := h.rs.InputOutliers(ctx, lacking); err != nil {
		var bad *rsapi.BadEventError
		if errors.As(err, &bad) {
			return pduErrorf("Cannot store fetched events: %s", bad.Reason)
		}
		return err
	}
	return nil
}

// verifyEvents parses events fetched from another server as untrusted
// events of the room's version and checks their signatures. With want,
// only events of those IDs are kept; an event of another room, or one
// that fails, fails them all.
func (h *TransactionHandler) verifyEvents(ctx context.Context, roomID string, version gomatrixserverlib.RoomVersion, raws []spec.RawJSON, want map[string]bool) ([]gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, pduErrorf("Unsupported room version %s", version)
	}
	var out []gomatrixserverlib.PDU
	seen := map[string]bool{}
	for _, raw := range raws {
		ev, err := parseUntrusted(verImpl, raw)
		if err != nil {
			return nil, pduErrorf("A fetched event is invalid: %v", err)
		}
		id := ev.EventID()
		if seen[id] || (want != nil && !want[id]) {
			continue
		}
		seen[id] = true
		if ev.RoomID().String() != roomID {
			return nil, pduErrorf("A fetched event %s is of another room", id)
		}
		if err := h.verify(ctx, ev); err != nil {
			return nil, pduErrorf("A fetched event %s failed its signature check", id)
		}
		out = append(out, ev)
	}
	return out, nil
}
