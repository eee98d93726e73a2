package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Room aliases (/directory/room), the published room directory
// (/directory/list/room, /publicRooms) and, from upgrade.go, room upgrades.

func (a *API) registerDirectoryRoutes(r *router) {
	// Resolving an alias and reading the directory need no access token
	// (the spec gives them no security requirement); changing them does.
	r.public(v3, "/directory/room/{roomAlias}", a.getRoomAlias, false, http.MethodGet)
	r.authed(v3, "/directory/room/{roomAlias}", a.putRoomAlias, http.MethodPut)
	r.authed(v3, "/directory/room/{roomAlias}", a.deleteRoomAlias, http.MethodDelete)
	r.authed(v3, "/rooms/{roomId}/aliases", a.getLocalAliases, http.MethodGet)
	r.public(v3, "/directory/list/room/{roomId}", a.getRoomVisibility, false, http.MethodGet)
	r.authed(v3, "/directory/list/room/{roomId}", a.putRoomVisibility, http.MethodPut)
	r.public(v3, "/publicRooms", a.getPublicRooms, false, http.MethodGet)
	r.authed(v3, "/publicRooms", a.postPublicRooms, http.MethodPost)
	a.registerUpgradeRoutes(r)
}

// maxRoomAliasLength is the spec's limit on a whole alias, in bytes.
const maxRoomAliasLength = 255

// validRoomAlias checks the spec's grammar: #localpart:server, at most 255
// bytes, the localpart any Unicode but ':' and NUL. It returns the server.
func validRoomAlias(alias string) (server string, err error) {
	if len(alias) > maxRoomAliasLength {
		return "", errors.New("longer than 255 bytes")
	}
	local, server, ok := strings.Cut(strings.TrimPrefix(alias, "#"), ":")
	if !strings.HasPrefix(alias, "#") || !ok {
		return "", errors.New("not of the form #localpart:server")
	}
	if local == "" || !utf8.ValidString(local) || strings.ContainsRune(local, 0) {
		return "", errors.New("bad localpart")
	}
	if err := config.ValidateServerName(server); err != nil {
		return "", errors.New("bad server name")
	}
	return server, nil
}

// aliasParam is the alias of the path, checked; local reports whether it
// is one of ours.
func (a *API) aliasParam(r *http.Request) (alias string, local bool, err error) {
	alias = httputil.Vars(r)["roomAlias"]
	server, err := validRoomAlias(alias)
	if err != nil {
		return "", false, httputil.InvalidParam("Room alias invalid: %v", err)
	}
	return alias, server == a.cfg.ServerName, nil
}

// roomIDParam is the room ID of the path, checked for its sigil only: room
// ID formats differ between room versions.
func roomIDParam(r *http.Request) (string, error) {
	roomID := httputil.Vars(r)["roomId"]
	if !strings.HasPrefix(roomID, "!") || len(roomID) > 255 {
		return "", httputil.InvalidParam("Invalid room ID")
	}
	return roomID, nil
}

func (a *API) getRoomAlias(w http.ResponseWriter, r *http.Request) error {
	alias, local, err := a.aliasParam(r)
	if err != nil {
		return err
	}
	if !local {
		// Another server's alias: ask it.
		if a.remote == nil {
			return httputil.NotFound("Room alias %s not found", alias)
		}
		roomID, servers, err := a.remote.ResolveRemoteAlias(r.Context(), alias)
		if err != nil {
			return err
		}
		httputil.WriteJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "servers": servers})
		return nil
	}
	roomID, err := a.rooms.ResolveAlias(r.Context(), alias)
	if err != nil {
		return err
	}
	if roomID == "" {
		return httputil.NotFound("Room alias %s not found", alias)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "servers": []string{a.cfg.ServerName}})
	return nil
}

func (a *API) putRoomAlias(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot create room aliases")
	}
	alias, local, err := a.aliasParam(r)
	if err != nil {
		return err
	}
	if !local {
		return httputil.InvalidParam("Room alias must be on this server (%s)", a.cfg.ServerName)
	}
	var body struct {
		RoomID *string `json:"room_id"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	if body.RoomID == nil {
		return httputil.MissingParam("Missing room_id")
	}
	if !strings.HasPrefix(*body.RoomID, "!") {
		return httputil.InvalidParam("Invalid room ID")
	}
	user := a.userID(s.Localpart)
	// The spec leaves who may alias a room to the server: only its
	// members, so that nobody can point names at rooms they are not in.
	m, err := a.rooms.Membership(r.Context(), *body.RoomID, user)
	if err != nil {
		return roomError(err)
	}
	if m.Membership != "join" {
		return httputil.Forbidden("You are not in the room")
	}
	switch err := a.rooms.SetAlias(r.Context(), alias, *body.RoomID, user); {
	case errors.Is(err, rsapi.ErrAliasInUse):
		return &httputil.Error{Status: http.StatusConflict, Code: "M_UNKNOWN", Message: "Room alias " + alias + " already exists."}
	case err != nil:
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deleteRoomAlias(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot delete room aliases")
	}
	alias, local, err := a.aliasParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := ""
	if local {
		if roomID, err = a.rooms.ResolveAlias(ctx, alias); err != nil {
			return err
		}
	}
	if roomID == "" {
		return httputil.NotFound("Room alias %s not found", alias)
	}
	user := a.userID(s.Localpart)
	// Its creator, a server admin, or whoever may name the room's
	// aliases (send m.room.canonical_alias) may delete an alias.
	creator, err := a.rooms.AliasCreator(ctx, alias)
	if err != nil {
		return err
	}
	if creator != user && !s.IsAdmin {
		ok, err := a.rooms.CanSendState(ctx, roomID, user, "m.room.canonical_alias")
		if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
			return err
		}
		if !ok {
			return httputil.Forbidden("You may not delete this room alias")
		}
	}
	if err := a.rooms.RemoveAlias(ctx, alias); errors.Is(err, rsapi.ErrAliasNotFound) {
		return httputil.NotFound("Room alias %s not found", alias)
	} else if err != nil {
		return err
	}
	if err := a.dropCanonicalAlias(ctx, roomID, alias, user); err != nil {
		// The alias is gone, which is what was asked; the room's state
		// lagging behind is not worth failing for.
		httputil.LoggerFrom(r).WithError(err).WithFields(logrus.Fields{"room_id": roomID}).Warn("update canonical alias")
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// dropCanonicalAlias takes a deleted alias out of the room's
// m.room.canonical_alias (alias and alt_aliases), sent as the user who
// deleted it. The spec lets servers do this and asks them to delete the
// alias anyway when the user may not send that event: then it is left.
func (a *API) dropCanonicalAlias(ctx context.Context, roomID, alias, user string) error {
	ev, err := a.rooms.CurrentStateEvent(ctx, roomID, "m.room.canonical_alias", "")
	if err != nil || ev == nil {
		return err
	}
	var content map[string]any
	if err := json.Unmarshal(ev.Content(), &content); err != nil {
		return nil // malformed content: nothing of ours to take out
	}
	changed := false
	if content["alias"] == alias {
		delete(content, "alias")
		changed = true
	}
	if alts, ok := content["alt_aliases"].([]any); ok {
		kept := []any{}
		for _, alt := range alts {
			if alt != alias {
				kept = append(kept, alt)
			}
		}
		if len(kept) != len(alts) {
			content["alt_aliases"] = kept
			changed = true
		}
	}
	if !changed {
		return nil
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	empty := ""
	_, err = a.rooms.SendEvent(ctx, rsapi.NewEvent{RoomID: roomID, Sender: user, Type: "m.room.canonical_alias", StateKey: &empty, Content: raw})
	var notAllowed *rsapi.NotAllowedError
	if errors.As(err, &notAllowed) {
		return nil
	}
	return err
}

func (a *API) getLocalAliases(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	// Members may list a room's aliases, anyone may when its history is
	// world readable, and server admins always may. An unknown room is
	// answered like one the user is not in.
	if !s.IsAdmin {
		m, err := a.rooms.Membership(ctx, roomID, a.userID(s.Localpart))
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			return httputil.Forbidden("You are not a member of the room")
		}
		if err != nil {
			return err
		}
		if m.Membership != "join" {
			hv, err := a.rooms.CurrentStateEvent(ctx, roomID, "m.room.history_visibility", "")
			if err != nil {
				return roomError(err)
			}
			var c struct {
				HistoryVisibility string `json:"history_visibility"`
			}
			if hv == nil || json.Unmarshal(hv.Content(), &c) != nil || c.HistoryVisibility != "world_readable" {
				return httputil.Forbidden("You are not a member of the room")
			}
		}
	} else if _, err := a.rooms.RoomVersion(ctx, roomID); err != nil {
		return roomError(err)
	}
	aliases, err := a.rooms.RoomAliases(ctx, roomID)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"aliases": aliases})
	return nil
}

func (a *API) getRoomVisibility(w http.ResponseWriter, r *http.Request) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	published, err := a.rooms.Published(r.Context(), roomID)
	if err != nil {
		return roomError(err)
	}
	visibility := "private"
	if published {
		visibility = "public"
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"visibility": visibility})
	return nil
}

func (a *API) putRoomVisibility(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot publish rooms")
	}
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var body struct {
		Visibility *string `json:"visibility"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	publish := true // the spec's default
	if body.Visibility != nil {
		switch *body.Visibility {
		case "public":
		case "private":
			publish = false
		default:
			return httputil.InvalidParam("visibility must be public or private")
		}
	}
	ctx := r.Context()
	if _, err := a.rooms.RoomVersion(ctx, roomID); err != nil {
		return roomError(err)
	}
	// The spec leaves this to the server: the room's creators, server
	// admins, and whoever may name the room's aliases, as for aliases.
	if !s.IsAdmin {
		user := a.userID(s.Localpart)
		ok, err := a.rooms.IsRoomCreator(ctx, roomID, user)
		if err != nil {
			return roomError(err)
		}
		if !ok {
			if ok, err = a.rooms.CanSendState(ctx, roomID, user, "m.room.canonical_alias"); err != nil {
				return roomError(err)
			}
		}
		if !ok {
			return httputil.Forbidden("You may not change this room's visibility in the directory")
		}
	}
	if err := a.rooms.SetPublished(ctx, roomID, publish); err != nil {
		return roomError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// publicRoomsRequest is what both forms of /publicRooms ask.
type publicRoomsRequest struct {
	rsapi.PublicRoomsRequest
	Server string `json:"-"` // always from the query string
}

func (a *API) getPublicRooms(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	req := publicRoomsRequest{Server: q.Get("server")}
	req.Since = q.Get("since")
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return httputil.InvalidParam("limit must be an integer")
		}
		req.Limit = n
	}
	return a.publicRooms(w, r, &req)
}

func (a *API) postPublicRooms(w http.ResponseWriter, r *http.Request, _ *accounts.Session) error {
	var req publicRoomsRequest
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	req.Server = r.URL.Query().Get("server")
	if req.IncludeAllNetworks && req.ThirdPartyInstanceID != "" {
		return httputil.InvalidParam("third_party_instance_id cannot be used with include_all_networks")
	}
	return a.publicRooms(w, r, &req)
}

// publicRooms answers /publicRooms: another server's list through the
// federation API, or a page of ours (rsapi.PagePublicRooms).
func (a *API) publicRooms(w http.ResponseWriter, r *http.Request, req *publicRoomsRequest) error {
	if req.Server != "" && req.Server != a.cfg.ServerName {
		if err := config.ValidateServerName(req.Server); err != nil {
			return httputil.InvalidParam("Invalid server name")
		}
		if a.queries == nil {
			return httputil.BadRequest("Cannot list the rooms of %s: federation is off", req.Server)
		}
		body, err := a.queries.RemotePublicRooms(r.Context(), req.Server, map[string]any{
			"limit": req.Limit, "since": req.Since, "filter": req.Filter,
			"include_all_networks": req.IncludeAllNetworks, "third_party_instance_id": req.ThirdPartyInstanceID,
		})
		if err != nil {
			return err
		}
		httputil.WriteJSON(w, http.StatusOK, body)
		return nil
	}
	// There are no application services, hence no third-party networks:
	// a request for one of them finds nothing.
	var rooms []rsapi.PublicRoom
	if req.ThirdPartyInstanceID == "" {
		var err error
		if rooms, err = a.rooms.PublicRooms(r.Context(), req.RoomsFilter()); err != nil {
			return err
		}
	}
	page, err := rsapi.PagePublicRooms(rooms, req.Since, req.Limit)
	if err != nil {
		return httputil.InvalidParam("%v", err)
	}
	httputil.WriteJSON(w, http.StatusOK, page)
	return nil
}
