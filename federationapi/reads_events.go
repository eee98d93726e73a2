package federationapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Events and state of rooms for other servers: /backfill,
// /get_missing_events, /state, /state_ids, /event, /event_auth and
// /timestamp_to_event.

// Limits on what one request may ask.
const (
	readsMaxBackfill        = 100 // events of one /backfill
	readsMaxBackfillFrom    = 20  // v parameters of one /backfill
	readsMaxMissingEvents   = 20  // events of one /get_missing_events
	readsDefaultMissing     = 10  // the spec's default limit
	readsMaxMissingEventIDs = 500 // earliest_events and latest_events, each
)

// backfill serves GET /backfill/{roomId}?v=...&limit=: the given events
// and those before them, deepest first. Events the origin may not see
// are sent redacted, so that its view of the graph has no holes.
func (h *readsAPI) backfill(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	roomID, err := readsRoomParam(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return httputil.MissingParam("v is required")
	}
	if len(from) > readsMaxBackfillFrom {
		return httputil.InvalidParam("At most %d v parameters", readsMaxBackfillFrom)
	}
	for _, id := range from {
		if err := readsEventParam(id); err != nil {
			return err
		}
	}
	limit := readsMaxBackfill
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return httputil.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, readsMaxBackfill)
	}
	ctx := r.Context()
	if _, err := h.checkRoom(ctx, roomID, origin); err != nil {
		return err
	}
	if err := h.checkParticipates(ctx, roomID, origin); err != nil {
		return err
	}
	events, err := h.rooms.BackfillEvents(ctx, roomID, from, limit)
	if err != nil {
		return readsError(err)
	}
	pdus, err := h.visibleOrRedacted(ctx, origin, events)
	if err != nil {
		return err
	}
	h.transaction(w, pdus)
	return nil
}

// getMissingEvents serves POST /get_missing_events/{roomId}: a
// breadth-first walk back from latest_events, never into earliest_events
// or below min_depth, oldest first. Only events the origin may see are
// sent.
func (h *readsAPI) getMissingEvents(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
	roomID, err := readsRoomParam(r)
	if err != nil {
		return err
	}
	var body struct {
		Limit    *int     `json:"limit"`
		MinDepth *int64   `json:"min_depth"`
		Earliest []string `json:"earliest_events"`
		Latest   []string `json:"latest_events"`
	}
	if err := httputil.DecodeJSONObject(req.Content(), &body); err != nil {
		return err
	}
	if body.Latest == nil {
		return httputil.BadJSON("latest_events is required")
	}
	if len(body.Latest) > readsMaxMissingEventIDs || len(body.Earliest) > readsMaxMissingEventIDs {
		return httputil.InvalidParam("At most %d earliest_events and latest_events", readsMaxMissingEventIDs)
	}
	limit := readsDefaultMissing
	if body.Limit != nil {
		if *body.Limit < 0 {
			return httputil.InvalidParam("limit must not be negative")
		}
		limit = min(*body.Limit, readsMaxMissingEvents)
	}
	var minDepth int64
	if body.MinDepth != nil {
		minDepth = *body.MinDepth
	}
	ctx := r.Context()
	if _, err := h.checkRoom(ctx, roomID, origin); err != nil {
		return err
	}
	if err := h.checkParticipates(ctx, roomID, origin); err != nil {
		return err
	}
	events, err := h.rooms.MissingEventsBetween(ctx, roomID, body.Earliest, body.Latest, limit, minDepth)
	if err != nil {
		return readsError(err)
	}
	visible, err := h.onlyVisible(ctx, origin, events)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"events": readsJSON(visible)})
	return nil
}

// stateAt checks a /state or /state_ids request and returns the state
// before the event and its auth chain. The origin must have had a joined
// user there, or the room must have been world_readable.
func (h *readsAPI) stateAt(r *http.Request, origin spec.ServerName) (stateEvents, authChain []gomatrixserverlib.PDU, err error) {
	roomID, err := readsRoomParam(r)
	if err != nil {
		return nil, nil, err
	}
	eventID := r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, httputil.MissingParam("event_id is required")
	}
	if err := readsEventParam(eventID); err != nil {
		return nil, nil, err
	}
	ctx := r.Context()
	if _, err := h.checkRoom(ctx, roomID, origin); err != nil {
		return nil, nil, err
	}
	ok, err := h.rooms.ServerMayReadStateAt(ctx, roomID, eventID, string(origin))
	if err != nil {
		return nil, nil, readsError(err)
	}
	if !ok {
		return nil, nil, httputil.Forbidden("You do not have permission to access the state at the requested event")
	}
	stateEvents, authChain, err = h.rooms.StateBeforeEventWithAuthChain(ctx, roomID, eventID)
	return stateEvents, authChain, readsError(err)
}

// state serves GET /state/{roomId}?event_id=.
func (h *readsAPI) state(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	stateEvents, authChain, err := h.stateAt(r, origin)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"pdus": readsJSON(stateEvents), "auth_chain": readsJSON(authChain)})
	return nil
}

// stateIDs serves GET /state_ids/{roomId}?event_id=.
func (h *readsAPI) stateIDs(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	stateEvents, authChain, err := h.stateAt(r, origin)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"pdu_ids": readsIDs(stateEvents), "auth_chain_ids": readsIDs(authChain)})
	return nil
}

func readsIDs(events []gomatrixserverlib.PDU) []string {
	out := make([]string, len(events))
	for i, ev := range events {
		out[i] = ev.EventID()
	}
	return out
}

// event serves GET /event/{eventId}: one event the origin may see, of a
// room whose ACL lets it in.
func (h *readsAPI) event(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	eventID := httputil.Vars(r)["eventId"]
	if err := readsEventParam(eventID); err != nil {
		return err
	}
	ctx := r.Context()
	ev, err := h.rooms.Event(ctx, eventID)
	if err != nil {
		return readsError(err)
	}
	if _, err := h.checkRoom(ctx, ev.RoomID().String(), origin); err != nil {
		return err
	}
	visible, err := h.onlyVisible(ctx, origin, []gomatrixserverlib.PDU{ev.PDU})
	if err != nil {
		return err
	}
	if len(visible) == 0 && !aboutUserOf(ev.PDU, origin) {
		return httputil.Forbidden("You may not see this event")
	}
	h.transaction(w, []json.RawMessage{ev.JSON()})
	return nil
}

// aboutUserOf reports whether an event is a membership event about a
// user of the server: the server of a user who was invited or knocked
// (and so is not in the room, and may see none of its history) gets the
// event ending that, and may fetch it and its auth chain to check it.
func aboutUserOf(ev gomatrixserverlib.PDU, server spec.ServerName) bool {
	return ev.Type() == spec.MRoomMember && ev.StateKey() != nil && userServerName(*ev.StateKey()) == server
}

// eventAuth serves GET /event_auth/{roomId}/{eventId}: the event's auth
// chain, for a server in the room or one that may see the event.
func (h *readsAPI) eventAuth(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	roomID, err := readsRoomParam(r)
	if err != nil {
		return err
	}
	eventID := httputil.Vars(r)["eventId"]
	if err := readsEventParam(eventID); err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := h.checkRoom(ctx, roomID, origin); err != nil {
		return err
	}
	if err := h.checkParticipates(ctx, roomID, origin); err != nil {
		// A server no longer in the room may still ask about an event it
		// may see.
		ev, evErr := h.rooms.Event(ctx, eventID)
		if evErr != nil {
			return readsError(evErr)
		}
		visible, visErr := h.onlyVisible(ctx, origin, []gomatrixserverlib.PDU{ev.PDU})
		if visErr != nil {
			return visErr
		}
		if len(visible) == 0 && !(aboutUserOf(ev.PDU, origin) && ev.RoomID().String() == roomID) {
			return err
		}
	}
	chain, err := h.rooms.EventAuthChain(ctx, roomID, eventID)
	if err != nil {
		return readsError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"auth_chain": readsJSON(chain)})
	return nil
}

// timestampToEvent serves GET /timestamp_to_event/{roomId}?ts=&dir=.
func (h *readsAPI) timestampToEvent(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	roomID, err := readsRoomParam(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if q.Get("ts") == "" {
		return httputil.MissingParam("ts is required")
	}
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil || ts < 0 {
		return httputil.InvalidParam("ts must be a timestamp in milliseconds")
	}
	var forward bool
	switch q.Get("dir") {
	case "f":
		forward = true
	case "b":
	case "":
		return httputil.MissingParam("dir is required")
	default:
		return httputil.InvalidParam("dir must be f or b")
	}
	ctx := r.Context()
	if _, err := h.checkRoom(ctx, roomID, origin); err != nil {
		return err
	}
	ev, err := h.rooms.EventAtTimestampForServer(ctx, roomID, string(origin), ts, forward)
	if errors.Is(err, rsapi.ErrEventNotFound) {
		return httputil.NotFound("No event found from %d in that direction", ts)
	}
	if err != nil {
		return readsError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"event_id": ev.EventID(), "origin_server_ts": ev.OriginServerTS()})
	return nil
}
