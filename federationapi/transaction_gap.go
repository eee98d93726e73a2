package federationapi

import (
	"context"
	"slices"
	"sort"
	"sync"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Filling a gap: an event we were sent names prev events we lack. As the
// spec's "Retrieving missing events" has it, we first ask the origin for
// the events in between (/get_missing_events, from our forward
// extremities to the event) and store them oldest first, each checked as
// a PDU. The oldest of them, whose own prev events we still lack, are the
// gap's edge: for each, we ask for the state after its prev event
// (/state_ids at the prev event, plus that event; at the event itself
// when it has several), fetch the events of it we lack (/event, or
// /state when many), store them as outliers and the event at that state.
// If /get_missing_events gives nothing, the event we were sent is the
// edge. An event we were sent whose gap stays open after that is refused:
// storing it at a state we were only told of would let it stand for the
// whole room.

// fillGap fills the gap before an event we were sent and inputs it.
func (h *TransactionHandler) fillGap(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) error {
	log := h.log.WithFields(logrus.Fields{"origin": origin, "event_id": pdu.EventID()})
	gave, err := h.fetchMissingEvents(ctx, origin, pdu, log)
	if err != nil {
		return h.outcome(rsapi.InputResult{}, err, pdu)
	}
	missing, err := h.rs.MissingPrevEvents(ctx, pdu)
	switch {
	case err != nil:
		return h.outcome(rsapi.InputResult{}, err, pdu)
	case len(missing) == 0:
		return h.inputAtPrevEvents(ctx, origin, pdu)
	case gave:
		return pduErrorf("Missing prev events %v, and %s did not give a way to them", missing, origin)
	}
	return h.inputAtFetchedState(ctx, origin, pdu)
}

// fetchMissingEvents asks the origin for the events between our forward
// extremities and the event and inputs them, oldest first; those at the
// gap's edge at a fetched state. gave says whether the origin gave any.
func (h *TransactionHandler) fetchMissingEvents(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU, log *logrus.Entry) (gave bool, err error) {
	roomID := pdu.RoomID().String()
	earliest, err := h.rs.ForwardExtremities(ctx, roomID)
	if err != nil {
		return false, err
	}
	known, err := h.rs.StoredEvents(ctx, earliest)
	if err != nil {
		return false, err
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
		return false, nil
	}
	raws := resp.Events
	if len(raws) > 2*missingEventsLimit {
		raws = raws[:2*missingEventsLimit]
	}
	events, err := h.verifyEvents(ctx, roomID, pdu.Version(), raws, nil)
	if err != nil {
		log.WithError(err).Info("get_missing_events gave events that fail the checks")
		return false, nil
	}
	events = slices.DeleteFunc(events, func(ev gomatrixserverlib.PDU) bool { return ev.EventID() == pdu.EventID() })
	sort.SliceStable(events, func(i, j int) bool { return events[i].Depth() < events[j].Depth() })
	given := map[string]bool{}
	for _, ev := range events {
		given[ev.EventID()] = true
	}
	stateFetches := 0
	for _, ev := range events {
		evLog := log.WithField("missing_event_id", ev.EventID())
		missing, err := h.rs.MissingPrevEvents(ctx, ev)
		if err != nil {
			return true, err
		}
		if len(missing) == 0 {
			err = h.inputAtPrevEvents(ctx, origin, ev)
		} else if slices.ContainsFunc(missing, func(id string) bool { return given[id] }) || stateFetches >= maxEdgeStateFetches {
			// Behind an event of the batch that failed: nothing to do.
			err = pduErrorf("missing prev events %v", missing)
		} else {
			stateFetches++
			err = h.inputAtFetchedState(ctx, origin, ev)
		}
		if err != nil {
			evLog.WithError(err).Info("a missing event could not be stored")
		}
	}
	return len(events) > 0, nil
}

func nonNilIDs(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}

// inputAtFetchedState asks the origin for the state before the event,
// stores what of it we lack as outliers, checks the event at its auth
// events and stores it at that state. With one prev event, the state
// asked for is the state at that prev event, plus the prev event itself
// when it is a state event; with several, the state at the event.
func (h *TransactionHandler) inputAtFetchedState(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) error {
	roomID := pdu.RoomID().String()
	at := pdu.EventID()
	var prev gomatrixserverlib.PDU
	if prevs := pdu.PrevEventIDs(); len(prevs) == 1 {
		at = prevs[0]
	}
	ids, err := h.client.LookupStateIDs(ctx, h.self, origin, roomID, at)
	if err != nil {
		return pduErrorf("Missing prev events, and %s did not give the state before the event: %v", origin, err)
	}
	if len(ids.StateEventIDs)+len(ids.AuthEventIDs) > maxStateEvents {
		return pduErrorf("The state before the event has more than %d events", maxStateEvents)
	}
	all := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(ids.StateEventIDs), ids.AuthEventIDs...))))
	if at != pdu.EventID() {
		all = append(all, at)
	}
	stored, err := h.rs.StoredEvents(ctx, all)
	if err != nil {
		return h.outcome(rsapi.InputResult{}, err, pdu)
	}
	lacking := map[string]bool{}
	for _, id := range all {
		if stored[id] == nil && id != at {
			lacking[id] = true
		}
	}
	var fetched []gomatrixserverlib.PDU
	if at != pdu.EventID() {
		if prev = stored[at]; prev == nil {
			if prev, err = h.fetchEvent(ctx, origin, roomID, pdu.Version(), at); err != nil {
				return err
			}
			fetched = append(fetched, prev)
		}
	}
	more, err := h.fetchEvents(ctx, origin, roomID, pdu.Version(), at, lacking)
	if err != nil {
		return err
	}
	fetched = append(fetched, more...)
	if err := h.storeOutliers(ctx, fetched); err != nil {
		return err
	}
	for _, ev := range fetched {
		stored[ev.EventID()] = ev
	}
	state := make([]gomatrixserverlib.PDU, 0, len(ids.StateEventIDs)+1)
	for _, id := range ids.StateEventIDs {
		ev := stored[id]
		if ev == nil {
			return pduErrorf("%s did not give state event %s", origin, id)
		}
		if ev.StateKey() == nil {
			return pduErrorf("The state holds %s, which is not a state event", id)
		}
		if prev != nil && prev.StateKey() != nil && ev.Type() == prev.Type() && *ev.StateKey() == *prev.StateKey() {
			continue // replaced by the prev event itself
		}
		state = append(state, ev)
	}
	if prev != nil && prev.StateKey() != nil {
		state = append(state, prev)
	}
	if err := h.checkAuthEvents(ctx, origin, pdu); err != nil {
		return err
	}
	res, err := h.rs.InputEventWithState(ctx, pdu, state)
	return h.outcome(res, err, pdu)
}

// fetchEvent fetches one event of the room from the origin with /event.
func (h *TransactionHandler) fetchEvent(ctx context.Context, origin spec.ServerName, roomID string, version gomatrixserverlib.RoomVersion, id string) (gomatrixserverlib.PDU, error) {
	var txn gomatrixserverlib.Transaction
	err := safely(h.log, func() (err error) {
		txn, err = h.client.GetEvent(ctx, h.self, origin, id)
		return err
	})
	if err != nil || len(txn.PDUs) == 0 {
		return nil, pduErrorf("%s did not give event %s: %v", origin, id, err)
	}
	events, err := h.verifyEvents(ctx, roomID, version, []spec.RawJSON{spec.RawJSON(txn.PDUs[0])}, map[string]bool{id: true})
	if err != nil {
		return nil, err
	}
	if len(events) == 0 {
		return nil, pduErrorf("%s gave another event for %s", origin, id)
	}
	return events[0], nil
}

// fetchEvents fetches the lacking events of the state at event at from
// the origin: one by one when few, else the whole state at once.
func (h *TransactionHandler) fetchEvents(ctx context.Context, origin spec.ServerName, roomID string, version gomatrixserverlib.RoomVersion, at string, lacking map[string]bool) ([]gomatrixserverlib.PDU, error) {
	if len(lacking) == 0 {
		return nil, nil
	}
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
		st, err := h.client.LookupState(ctx, h.self, origin, roomID, at, version)
		if err != nil {
			return nil, pduErrorf("Missing prev events, and %s did not give the state before the event: %v", origin, err)
		}
		if len(st.StateEvents)+len(st.AuthEvents) > 2*maxStateEvents {
			return nil, pduErrorf("The state before the event is too large")
		}
		raws = append(append(raws, st.StateEvents...), st.AuthEvents...)
	}
	events, err := h.verifyEvents(ctx, roomID, version, raws, lacking)
	if err != nil {
		return nil, err
	}
	if len(events) < len(lacking) {
		return nil, pduErrorf("%s did not give all the events of the state before the event", origin)
	}
	return events, nil
}
