package federationapi

import (
	"context"
	"errors"
	"slices"
	"sort"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

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
// An event whose prev events we lack is a gap: we ask the origin for the
// events in between (/get_missing_events, from our forward extremities to
// the event), check and store them oldest first, and if that does not
// close the gap, ask for the state before the event (/state_ids), fetch
// the events of it we lack (/event, or /state when many), store them as
// outliers and the event at that state.

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

// input checks an event at its auth events and hands it to the
// roomserver, filling a gap before it when it has one.
func (h *TransactionHandler) input(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU, gaps *gapBudget) error {
	if err := h.checkAuthEvents(ctx, origin, pdu); err != nil {
		return err
	}
	res, err := h.rs.InputRemoteEvent(ctx, pdu)
	var missing *rsapi.MissingPrevEventsError
	if errors.As(err, &missing) {
		if !gaps.take() {
			return pduErrorf("Missing prev events %v, and this transaction fetched enough already", missing.EventIDs)
		}
		res, err = h.fillGap(ctx, origin, pdu)
	}
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
// fetching those we lack from the origin first.
func (h *TransactionHandler) checkAuthEvents(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) error {
	missing, err := h.rs.CheckAuthEvents(ctx, pdu)
	if err != nil || len(missing) == 0 {
		return h.outcome(rsapi.InputResult{}, err, pdu)
	}
	if err := h.fetchAuthChain(ctx, origin, pdu); err != nil {
		return err
	}
	missing, err = h.rs.CheckAuthEvents(ctx, pdu)
	if err == nil && len(missing) > 0 {
		return pduErrorf("Missing auth events %v", missing)
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
		ev, err := verImpl.NewEventFromUntrustedJSON(raw)
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

// fillGap fills the gap before an event whose prev events we lack and
// inputs the event.
func (h *TransactionHandler) fillGap(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) (rsapi.InputResult, error) {
	log := h.log.WithFields(logrus.Fields{"origin": origin, "event_id": pdu.EventID()})
	if res, done, err := h.fetchMissingEvents(ctx, origin, pdu, log); done {
		return res, err
	}
	return h.inputAtFetchedState(ctx, origin, pdu)
}

// fetchMissingEvents asks the origin for the events between our forward
// extremities and the event and inputs them, oldest first, then the
// event. done is false when the gap is still there.
func (h *TransactionHandler) fetchMissingEvents(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU, log *logrus.Entry) (res rsapi.InputResult, done bool, err error) {
	roomID := pdu.RoomID().String()
	earliest, err := h.rs.ForwardExtremities(ctx, roomID)
	if err != nil {
		return res, true, err
	}
	known, err := h.rs.StoredEvents(ctx, earliest)
	if err != nil {
		return res, true, err
	}
	minDepth := int64(0)
	for _, ev := range known {
		if minDepth == 0 || ev.Depth() < minDepth {
			minDepth = ev.Depth()
		}
	}
	resp, err := h.client.LookupMissingEvents(ctx, h.self, origin, roomID, fclient.MissingEvents{
		Limit: missingEventsLimit, MinDepth: int(minDepth), EarliestEvents: nonNilIDs(earliest), LatestEvents: []string{pdu.EventID()},
	}, pdu.Version())
	if err != nil {
		log.WithError(err).Info("get_missing_events failed")
		return res, false, nil
	}
	raws := resp.Events
	if len(raws) > 2*missingEventsLimit {
		raws = raws[:2*missingEventsLimit]
	}
	events, err := h.verifyEvents(ctx, roomID, pdu.Version(), raws, nil)
	if err != nil {
		log.WithError(err).Info("get_missing_events gave events that fail the checks")
		return res, false, nil
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].Depth() < events[j].Depth() })
	for _, ev := range events {
		if ev.EventID() == pdu.EventID() {
			continue
		}
		if err := h.checkAuthEvents(ctx, origin, ev); err != nil {
			log.WithError(err).WithField("missing_event_id", ev.EventID()).Info("a missing event fails its auth events")
			continue
		}
		if _, err := h.rs.InputRemoteEvent(ctx, ev); err != nil {
			// A gap before it too, or worse: the state fetch below covers
			// the event we were sent.
			log.WithError(err).WithField("missing_event_id", ev.EventID()).Debug("a missing event could not be stored")
		}
	}
	res, err = h.rs.InputRemoteEvent(ctx, pdu)
	var missing *rsapi.MissingPrevEventsError
	if errors.As(err, &missing) {
		return res, false, nil
	}
	return res, true, err
}

func nonNilIDs(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}

// inputAtFetchedState asks the origin for the state before the event,
// stores what of it we lack as outliers, and the event at that state.
func (h *TransactionHandler) inputAtFetchedState(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) (rsapi.InputResult, error) {
	roomID, eventID := pdu.RoomID().String(), pdu.EventID()
	ids, err := h.client.LookupStateIDs(ctx, h.self, origin, roomID, eventID)
	if err != nil {
		return rsapi.InputResult{}, pduErrorf("Missing prev events, and %s did not give the state before the event: %v", origin, err)
	}
	if len(ids.StateEventIDs)+len(ids.AuthEventIDs) > maxStateEvents {
		return rsapi.InputResult{}, pduErrorf("The state before the event has more than %d events", maxStateEvents)
	}
	all := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(ids.StateEventIDs), ids.AuthEventIDs...))))
	stored, err := h.rs.StoredEvents(ctx, all)
	if err != nil {
		return rsapi.InputResult{}, err
	}
	lacking := map[string]bool{}
	for _, id := range all {
		if stored[id] == nil {
			lacking[id] = true
		}
	}
	fetched, err := h.fetchEvents(ctx, origin, pdu, lacking)
	if err != nil {
		return rsapi.InputResult{}, err
	}
	if err := h.storeOutliers(ctx, fetched); err != nil {
		return rsapi.InputResult{}, err
	}
	for _, ev := range fetched {
		stored[ev.EventID()] = ev
	}
	state := make([]gomatrixserverlib.PDU, 0, len(ids.StateEventIDs))
	for _, id := range ids.StateEventIDs {
		ev := stored[id]
		if ev == nil {
			return rsapi.InputResult{}, pduErrorf("%s did not give state event %s", origin, id)
		}
		if ev.StateKey() == nil {
			return rsapi.InputResult{}, pduErrorf("The state holds %s, which is not a state event", id)
		}
		state = append(state, ev)
	}
	return h.rs.InputEventWithState(ctx, pdu, state)
}

// fetchEvents fetches the lacking events of the state before pdu from
// the origin: one by one when few, else the whole state at once.
func (h *TransactionHandler) fetchEvents(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU, lacking map[string]bool) ([]gomatrixserverlib.PDU, error) {
	if len(lacking) == 0 {
		return nil, nil
	}
	roomID := pdu.RoomID().String()
	var raws []spec.RawJSON
	if len(lacking) <= maxSingleFetches {
		var mu sync.Mutex
		var firstErr error
		ids := make(chan string)
		var wg sync.WaitGroup
		for range min(fetchWorkers, len(lacking)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := range ids {
					var txn gomatrixserverlib.Transaction
					err := safely(h.log, func() (err error) {
						txn, err = h.client.GetEvent(ctx, h.self, origin, id)
						return err
					})
					mu.Lock()
					switch {
					case err != nil && firstErr == nil:
						firstErr = pduErrorf("%s did not give event %s: %v", origin, id, err)
					case err == nil && len(txn.PDUs) > 0:
						raws = append(raws, spec.RawJSON(txn.PDUs[0]))
					}
					mu.Unlock()
				}
			}()
		}
		for id := range lacking {
			ids <- id
		}
		close(ids)
		wg.Wait()
		if firstErr != nil {
			return nil, firstErr
		}
	} else {
		st, err := h.client.LookupState(ctx, h.self, origin, roomID, pdu.EventID(), pdu.Version())
		if err != nil {
			return nil, pduErrorf("Missing prev events, and %s did not give the state before the event: %v", origin, err)
		}
		if len(st.StateEvents)+len(st.AuthEvents) > 2*maxStateEvents {
			return nil, pduErrorf("The state before the event is too large")
		}
		raws = append(append(raws, st.StateEvents...), st.AuthEvents...)
	}
	events, err := h.verifyEvents(ctx, roomID, pdu.Version(), raws, lacking)
	if err != nil {
		return nil, err
	}
	if len(events) < len(lacking) {
		return nil, pduErrorf("%s did not give all the events of the state before the event", origin)
	}
	return events, nil
}
