package clientapi

import (
	"net/http"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// GET /_matrix/client/v1/room_summary/{roomIdOrAlias} (and MSC3266's
// unstable path): a room's summary for a user who may see it (the
// hierarchy's rules), or for anyone when the room is public, knockable or
// world_readable. Rooms this server has no state for are asked of the via
// servers over federation. A room the user may not see is 404, like one
// that does not exist, so that the answer does not tell them apart.

func (a *API) registerRoomSummaryRoutes(r *router) {
	r.public(v1, "/room_summary/{roomIdOrAlias}", a.roomSummary, false, http.MethodGet)
	r.mux.Handle("/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}",
		httputil.Handler(func(w http.ResponseWriter, req *http.Request) error {
			if err := a.limit.Check(httputil.ClientIP(req)); err != nil {
				return err
			}
			return a.roomSummary(w, req)
		})).Methods(http.MethodGet)
}

func (a *API) roomSummary(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	// The access token is optional here; a wrong one is still an error.
	userID := ""
	if _, ok := accessToken(r); ok || r.Header.Get("Authorization") != "" {
		s, err := a.authenticate(r)
		if err != nil {
			return err
		}
		if err := a.limit.Check(s.Localpart); err != nil {
			return err
		}
		userID = a.userID(s.Localpart)
	}
	roomID, fromAlias, err := a.resolveRoom(ctx, httputil.Vars(r)["roomIdOrAlias"])
	if err != nil {
		return err
	}
	via := viaServers(r, fromAlias)
	if server := roomIDServer(roomID); server != "" {
		via = append(via, server)
	}
	if len(via) > maxViaTried {
		via = via[:maxViaTried]
	}
	room, err := a.findRoom(ctx, roomID, via, false, newRemoteRooms())
	if err != nil {
		return err
	}
	if room == nil {
		return httputil.NotFound("Room %s not found", roomID)
	}
	joined, err := a.joinedRoomSet(ctx, userID)
	if err != nil {
		return err
	}
	membership, ok, err := a.userMaySee(ctx, room, userID, joined)
	if err != nil {
		return err
	}
	if !ok {
		return httputil.NotFound("Room %s not found", roomID)
	}
	resp := struct {
		rsapi.RoomSummary
		Membership string `json:"membership,omitempty"`
	}{RoomSummary: *room}
	if userID != "" {
		resp.Membership = membership
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}
