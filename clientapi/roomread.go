package clientapi

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/clientevent"
	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Reading events and state. Everything goes through the history
// visibility rules (rsapi.UserReader): state and members as the user may
// read them (current when joined or world_readable, else as when they
// left), single events by the visibility at that event.
func (a *API) registerRoomReadRoutes(r *router) {
	r.authed(v3, "/rooms/{roomId}/event/{eventId}", a.getEvent, http.MethodGet)
	r.authed(v3, "/rooms/{roomId}/state", a.getState, http.MethodGet)
	r.authed(v3, "/rooms/{roomId}/state/{eventType}", a.getStateEvent, http.MethodGet)
	r.authed(v3, "/rooms/{roomId}/state/{eventType}/", a.getStateEvent, http.MethodGet)
	r.authed(v3, "/rooms/{roomId}/state/{eventType}/{stateKey}", a.getStateEvent, http.MethodGet)
	r.authed(v3, "/rooms/{roomId}/members", a.getMembers, http.MethodGet)
	r.authed(v3, "/rooms/{roomId}/joined_members", a.getJoinedMembers, http.MethodGet)
	r.authed(v1, "/rooms/{roomId}/timestamp_to_event", a.timestampToEvent, http.MethodGet)
}

// getEvent is GET /rooms/{roomId}/event/{eventId}. An event the user may
// not see is as unknown as one that does not exist (the spec's 404).
func (a *API) getEvent(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, err := roomParam(r)
	if err != nil {
		return err
	}
	notFound := httputil.NotFound("Event not found")
	eventID, err := textParam(r, "eventId")
	if err != nil {
		return notFound // no event has such an ID
	}
	ev, err := a.rooms.Event(r.Context(), eventID)
	if errors.Is(err, rsapi.ErrEventNotFound) {
		return notFound
	}
	if err != nil {
		return roomError(err)
	}
	if ev.RoomID().String() != roomID {
		return notFound
	}
	visible, err := a.rooms.VisibleEvents(r.Context(), a.userID(s.Localpart), []gomatrixserverlib.PDU{ev.PDU})
	if err != nil {
		return err
	}
	if len(visible) == 0 {
		return notFound
	}
	out := []clientevent.Event{clientevent.Format(ev.PDU, clientevent.Options{})}
	if a.relations != nil {
		if err := a.relations.BundleAggregations(r.Context(), s.Localpart, []gomatrixserverlib.PDU{ev.PDU}, out); err != nil {
			return err
		}
	}
	httputil.WriteJSON(w, http.StatusOK, out[0])
	return nil
}

// readableState is the state of the path's room the user may read.
func (a *API) readableState(r *http.Request, s *accounts.Session) (rsapi.ReadableState, error) {
	roomID, err := roomParam(r)
	if err != nil {
		return rsapi.ReadableState{}, err
	}
	st, err := a.rooms.ReadableState(r.Context(), roomID, a.userID(s.Localpart))
	return st, roomError(err)
}

// getState is GET /rooms/{roomId}/state: every state event.
func (a *API) getState(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	st, err := a.readableState(r, s)
	if err != nil {
		return err
	}
	events, err := a.rooms.StateAt(r.Context(), st.Snapshot)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, clientevent.FormatAll(events, clientevent.Options{}))
	return nil
}

// getStateEvent is GET /rooms/{roomId}/state/{eventType}/{stateKey}: the
// content, or with format=event the whole event (spec v1.16).
func (a *API) getStateEvent(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	format := r.URL.Query().Get("format")
	if format != "" && format != "content" && format != "event" {
		return httputil.InvalidParam("format must be content or event")
	}
	eventType, stateKey, err := stateParams(r)
	if err != nil {
		return err
	}
	st, err := a.readableState(r, s)
	if err != nil {
		return err
	}
	ev, err := a.rooms.StateEventAt(r.Context(), st.Snapshot, eventType, stateKey)
	if err != nil {
		return err
	}
	if ev == nil {
		return httputil.NotFound("The room has no state with this type and key")
	}
	if format == "event" {
		httputil.WriteJSON(w, http.StatusOK, clientevent.Format(ev, clientevent.Options{}))
		return nil
	}
	content := ev.Content()
	if len(content) == 0 {
		content = []byte("{}")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(content)))
	_, _ = w.Write(content)
	return nil
}

// membershipValues are the values the membership filters of /members take.
var membershipValues = map[string]bool{spec.Join: true, spec.Invite: true, spec.Knock: true, spec.Leave: true, spec.Ban: true}

// getMembers is GET /rooms/{roomId}/members. The at parameter is a sync
// pagination token; the sync API does not exist yet, so it is ignored and
// the members are those of the state the user may read.
func (a *API) getMembers(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	q := r.URL.Query()
	membership, notMembership := q.Get("membership"), q.Get("not_membership")
	if (membership != "" && !membershipValues[membership]) || (notMembership != "" && !membershipValues[notMembership]) {
		return httputil.InvalidParam("Unknown membership")
	}
	st, err := a.readableState(r, s)
	if err != nil {
		return err
	}
	events, err := a.rooms.StateAt(r.Context(), st.Snapshot, spec.MRoomMember)
	if err != nil {
		return err
	}
	chunk := make([]gomatrixserverlib.PDU, 0, len(events))
	for _, ev := range events {
		if keepMember(gjson.GetBytes(ev.Content(), "membership").String(), membership, notMembership) {
			chunk = append(chunk, ev)
		}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"chunk": clientevent.FormatAll(chunk, clientevent.Options{})})
	return nil
}

// keepMember applies the filters of /members. Given both, the spec makes
// them an "or": the membership is the one asked for, or is not the one
// excluded.
func keepMember(m, membership, notMembership string) bool {
	switch {
	case membership != "" && notMembership != "":
		return m == membership || m != notMembership
	case membership != "":
		return m == membership
	case notMembership != "":
		return m != notMembership
	}
	return true
}

// joinedMember is an entry of /joined_members.
// Both keys are always there, null when the member event has none, as
// clients (and SyTest) expect.
type joinedMember struct {
	DisplayName *string `json:"display_name"`
	AvatarURL   *string `json:"avatar_url"`
}

// getJoinedMembers is GET /rooms/{roomId}/joined_members. The spec wants
// the user in the room; a world_readable room's members are readable by
// anyone through /members anyway, so those are allowed too. A user who
// left gets 403, not the members of the past.
func (a *API) getJoinedMembers(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot use this endpoint")
	}
	st, err := a.readableState(r, s)
	if err != nil {
		return err
	}
	if !st.Current {
		return httputil.Forbidden("You are not a member of this room")
	}
	events, err := a.rooms.StateAt(r.Context(), st.Snapshot, spec.MRoomMember)
	if err != nil {
		return err
	}
	joined := map[string]joinedMember{}
	for _, ev := range events {
		c := gjson.ParseBytes(ev.Content())
		if ev.StateKey() == nil || c.Get("membership").String() != spec.Join {
			continue
		}
		m := joinedMember{}
		if v := c.Get("displayname"); v.Type == gjson.String {
			m.DisplayName = &v.Str
		}
		if v := c.Get("avatar_url"); v.Type == gjson.String {
			m.AvatarURL = &v.Str
		}
		joined[*ev.StateKey()] = m
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"joined": joined})
	return nil
}

// timestampToEvent is GET /v1/rooms/{roomId}/timestamp_to_event: the
// nearest event the user may see. Only this server's copy of the room is
// searched; asking other servers needs federation.
func (a *API) timestampToEvent(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot use this endpoint")
	}
	roomID, err := roomParam(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if !q.Has("ts") {
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
	ev, err := a.rooms.EventAtTimestamp(r.Context(), roomID, a.userID(s.Localpart), ts, forward)
	if errors.Is(err, rsapi.ErrEventNotFound) {
		dir := "backward"
		if forward {
			dir = "forward"
		}
		return httputil.NotFound("Unable to find an event from %d in the %s direction", ts, dir)
	}
	if err != nil {
		return roomError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"event_id": ev.EventID(), "origin_server_ts": int64(ev.OriginServerTS())})
	return nil
}
