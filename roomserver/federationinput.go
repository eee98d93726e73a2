package roomserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
)

// Queries the federation API's transaction handler makes around
// InputRemoteEvent: what to ask another server for when an event's prev
// events or auth events are missing, and the spec's check of an event
// against the auth events it names.

// maxStoredEventsQuery bounds one StoredEvents call.
const maxStoredEventsQuery = 10000

// ForwardExtremities returns the IDs of the room's forward extremities,
// deepest first.
func (r *Roomserver) ForwardExtremities(ctx context.Context, roomID string) ([]string, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	xs, err := r.extremities(ctx, q, rm.nid)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(xs))
	for i, x := range xs {
		ids[i] = x.eventID
	}
	return ids, nil
}

// StoredEvents returns the events among eventIDs that are stored in any
// form (outliers, rejected and soft-failed events too), by ID. Those it
// leaves out are unknown.
func (r *Roomserver) StoredEvents(ctx context.Context, eventIDs []string) (map[string]gomatrixserverlib.PDU, error) {
	if len(eventIDs) > maxStoredEventsQuery {
		return nil, fmt.Errorf("roomserver: %d events asked at once (at most %d)", len(eventIDs), maxStoredEventsQuery)
	}
	q := r.db.Reader()
	out := make(map[string]gomatrixserverlib.PDU, len(eventIDs))
	for _, id := range eventIDs {
		if _, done := out[id]; done {
			continue
		}
		ev, err := r.eventByID(ctx, q, id)
		if errors.Is(err, api.ErrEventNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[id] = ev.pdu
	}
	return out, nil
}

// MissingPrevEvents returns the event's prev events whose state is not
// known: unknown, outliers, or rejected without state. InputRemoteEvent
// needs none missing.
func (r *Roomserver) MissingPrevEvents(ctx context.Context, pdu gomatrixserverlib.PDU) ([]string, error) {
	q := r.db.Reader()
	var missing []string
	for _, id := range pdu.PrevEventIDs() {
		ev, err := r.eventByID(ctx, q, id)
		switch {
		case errors.Is(err, api.ErrEventNotFound):
			missing = append(missing, id)
		case err != nil:
			return nil, err
		case !hasState(ev):
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// CheckAuthEvents applies the auth rules to an event from another server
// at the auth events it names (check 4 of the spec's checks on receipt of
// a PDU; InputRemoteEvent applies them at the state before the event and
// at the current state). It returns the auth events that are not stored,
// for the caller to fetch, or a *NotAllowedError when the event must be
// rejected: an auth event that is rejected, of another room, not a state
// event, listed twice for one (type, state key), not one the auth events
// selection asks for, or rules that refuse the event.
func (r *Roomserver) CheckAuthEvents(ctx context.Context, pdu gomatrixserverlib.PDU) ([]string, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(pdu.Version())
	if err != nil {
		return nil, &api.NotAllowedError{Reason: "unknown room version"}
	}
	roomID := pdu.RoomID().String()
	ids := pdu.AuthEventIDs()
	listed := len(ids)
	isCreate := pdu.Type() == spec.MRoomCreate && pdu.StateKey() != nil && *pdu.StateKey() == ""
	if verImpl.DomainlessRoomIDs() && !isCreate {
		// From room version 12 the room ID names the create event, which
		// auth_events leaves out.
		ids = append(ids[:listed:listed], "$"+roomID[1:])
	}
	needed := map[gomatrixserverlib.StateKeyTuple]bool{}
	for _, t := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{pdu}).Tuples() {
		needed[t] = true
	}
	q := r.db.Reader()
	var missing []string
	var authEvents []gomatrixserverlib.PDU
	seen := map[gomatrixserverlib.StateKeyTuple]bool{}
	for i, id := range ids {
		ev, err := r.eventByID(ctx, q, id)
		if errors.Is(err, api.ErrEventNotFound) {
			missing = append(missing, id)
			continue
		}
		if err != nil {
			return nil, err
		}
		a := ev.pdu
		switch {
		case a.RoomID().String() != roomID:
			return nil, notAllowedf("auth event %s is in another room", id)
		case a.StateKey() == nil:
			return nil, notAllowedf("auth event %s is not a state event", id)
		case ev.status == statusRejected:
			return nil, notAllowedf("auth event %s was rejected", id)
		}
		k := gomatrixserverlib.StateKeyTuple{EventType: a.Type(), StateKey: *a.StateKey()}
		if i < listed {
			if seen[k] {
				return nil, notAllowedf("auth events list (%s, %s) twice", k.EventType, k.StateKey)
			}
			if !needed[k] {
				return nil, notAllowedf("auth event %s (%s, %s) is not one the auth rules select", id, k.EventType, k.StateKey)
			}
		}
		seen[k] = true
		authEvents = append(authEvents, a)
	}
	if len(missing) > 0 {
		return missing, nil
	}
	provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
	if err != nil {
		return nil, notAllowedf("auth events: %v", err)
	}
	if err := gomatrixserverlib.Allowed(pdu, provider, userIDForSender); err != nil {
		return nil, notAllowedf("%v", err)
	}
	return nil, nil
}

func notAllowedf(format string, args ...any) error {
	return &api.NotAllowedError{Reason: fmt.Sprintf(format, args...)}
}
