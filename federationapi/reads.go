package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// The read endpoints other servers call: events and state of rooms
// (reads_events.go), queries, the room directory and devices
// (reads_query.go), and OpenID (reads_openid.go). Room endpoints apply
// the room's server ACL to the requesting server (403 M_FORBIDDEN) and
// the history visibility rules for servers (a server sees what one of its
// users could).

// ReadRooms is what the read endpoints need from the roomserver.
type ReadRooms interface {
	rsapi.FederationReader
	RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error)
	Event(ctx context.Context, eventID string) (*rsapi.Event, error)
	ResolveAlias(ctx context.Context, alias string) (string, error)
	PublicRooms(ctx context.Context, filter rsapi.PublicRoomsFilter) ([]rsapi.PublicRoom, error)
}

// ReadAccounts is what the read endpoints need from the accounts
// component: profiles and devices of our users.
type ReadAccounts interface {
	Account(ctx context.Context, localpart string) (*accounts.Account, error)
	Profile(ctx context.Context, localpart string) (accounts.Profile, error)
	Devices(ctx context.Context, localpart string) ([]accounts.Device, error)
}

// readsAPI serves the read endpoints.
type readsAPI struct {
	f        *FederationAPI
	rooms    ReadRooms
	accounts ReadAccounts
	// keyServer serves /user/devices and /user/keys/*; nil leaves them empty.
	keyServer ReadKeys
	openID    *OpenIDTokens
	now       func() time.Time
}

// RegisterReads registers the read endpoints; call it before the server
// serves (internal/server does).
func (f *FederationAPI) RegisterReads(rooms ReadRooms, accts ReadAccounts, keys ReadKeys) {
	h := &readsAPI{f: f, rooms: rooms, accounts: accts, keyServer: keys, openID: f.OpenIDTokens(), now: time.Now}
	const v1 = "/_matrix/federation/v1"
	f.Handle(v1+"/backfill/{roomId}", h.backfill, http.MethodGet)
	f.Handle(v1+"/get_missing_events/{roomId}", h.getMissingEvents, http.MethodPost)
	f.Handle(v1+"/state/{roomId}", h.state, http.MethodGet)
	f.Handle(v1+"/state_ids/{roomId}", h.stateIDs, http.MethodGet)
	f.Handle(v1+"/event/{eventId}", h.event, http.MethodGet)
	f.Handle(v1+"/event_auth/{roomId}/{eventId}", h.eventAuth, http.MethodGet)
	f.Handle(v1+"/timestamp_to_event/{roomId}", h.timestampToEvent, http.MethodGet)
	f.Handle(v1+"/query/profile", h.queryProfile, http.MethodGet)
	f.Handle(v1+"/query/directory", h.queryDirectory, http.MethodGet)
	f.Handle(v1+"/publicRooms", h.publicRoomsGET, http.MethodGet)
	f.Handle(v1+"/publicRooms", h.publicRoomsPOST, http.MethodPost)
	f.Handle(v1+"/user/devices/{userId}", h.userDevices, http.MethodGet)
	f.Handle(v1+"/user/keys/query", h.userKeysQuery, http.MethodPost)
	f.Handle(v1+"/user/keys/claim", h.userKeysClaim, http.MethodPost)
	f.HandlePublic(v1+"/openid/userinfo", h.openIDUserInfo, http.MethodGet)
}

// readsRoomParam is the room ID of the path, checked for its sigil only:
// room ID formats differ between room versions.
func readsRoomParam(r *http.Request) (string, error) {
	roomID := httputil.Vars(r)["roomId"]
	if !strings.HasPrefix(roomID, "!") || len(roomID) > 255 {
		return "", httputil.InvalidParam("Invalid room ID")
	}
	return roomID, nil
}

// readsEventParam checks an event ID's sigil and length.
func readsEventParam(id string) error {
	if !strings.HasPrefix(id, "$") || len(id) > 255 {
		return httputil.InvalidParam("Invalid event ID")
	}
	return nil
}

// readsError maps the roomserver's errors to Matrix errors.
func readsError(err error) error {
	var notAllowed *rsapi.NotAllowedError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rsapi.ErrRoomNotFound):
		return httputil.NotFound("Unknown room")
	case errors.Is(err, rsapi.ErrEventNotFound):
		return httputil.NotFound("Unknown event")
	case errors.As(err, &notAllowed):
		return httputil.Forbidden("%s", notAllowed.Reason)
	}
	return err
}

// checkRoom answers 404 for a room we do not know and 403 when the room's
// server ACL denies origin. It returns the room version.
func (h *readsAPI) checkRoom(ctx context.Context, roomID string, origin spec.ServerName) (gomatrixserverlib.RoomVersion, error) {
	version, err := h.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return "", readsError(err)
	}
	ok, err := h.rooms.ServerACLAllows(ctx, roomID, string(origin))
	if err != nil {
		return "", readsError(err)
	}
	if !ok {
		return "", httputil.Forbidden("Server %s is denied by the room's server ACL", origin)
	}
	return version, nil
}

// checkParticipates answers 403 unless origin has a user joined or
// invited, or the room is world_readable: the room-wide gate of the graph
// endpoints, before the per-event visibility rules.
func (h *readsAPI) checkParticipates(ctx context.Context, roomID string, origin spec.ServerName) error {
	ok, err := h.rooms.ServerParticipates(ctx, roomID, string(origin))
	if err != nil {
		return readsError(err)
	}
	if !ok {
		return httputil.Forbidden("Server %s is not in room %s", origin, roomID)
	}
	return nil
}

// transaction writes the {origin, origin_server_ts, pdus} shape of
// /backfill and /event.
func (h *readsAPI) transaction(w http.ResponseWriter, pdus []json.RawMessage) {
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"origin":           h.f.ServerName(),
		"origin_server_ts": spec.AsTimestamp(h.now()),
		"pdus":             pdus,
	})
}

// readsJSON is the events' JSON, as stored (redacted events in their
// redacted form).
func readsJSON(events []gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, len(events))
	for i, ev := range events {
		out[i] = ev.JSON()
	}
	return out
}

// visibleOrRedacted gives the events the origin may see as they are and
// the others in their redacted form (the room version's algorithm), so
// that a history walk stays connected without showing what the server
// may not see.
func (h *readsAPI) visibleOrRedacted(ctx context.Context, origin spec.ServerName, events []gomatrixserverlib.PDU) ([]json.RawMessage, error) {
	ok, err := h.rooms.ServerCanSee(ctx, string(origin), events)
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, 0, len(events))
	for i, ev := range events {
		if ok[i] {
			out = append(out, ev.JSON())
			continue
		}
		verImpl, err := gomatrixserverlib.GetRoomVersion(ev.Version())
		if err != nil {
			continue
		}
		redacted, err := verImpl.RedactEventJSON(ev.JSON())
		if err != nil {
			continue
		}
		out = append(out, redacted)
	}
	return out, nil
}

// onlyVisible keeps the events the origin may see.
func (h *readsAPI) onlyVisible(ctx context.Context, origin spec.ServerName, events []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	ok, err := h.rooms.ServerCanSee(ctx, string(origin), events)
	if err != nil {
		return nil, err
	}
	out := make([]gomatrixserverlib.PDU, 0, len(events))
	for i, ev := range events {
		if ok[i] {
			out = append(out, ev)
		}
	}
	return out, nil
}
