package clientapi

import (
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// POST /rooms/{roomId}/upgrade: the roomserver does the work (see
// roomserver/upgrade.go); this checks the request.

func (a *API) registerUpgradeRoutes(r *router) {
	r.authed(v3, "/rooms/{roomId}/upgrade", a.upgradeRoom, http.MethodPost)
}

func (a *API) upgradeRoom(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot upgrade rooms")
	}
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var body struct {
		NewVersion         *string  `json:"new_version"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	if body.NewVersion == nil {
		return httputil.MissingParam("Missing new_version")
	}
	version := gomatrixserverlib.RoomVersion(*body.NewVersion)
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil || !verImpl.Stable() {
		return roomError(rsapi.ErrUnsupportedRoomVersion)
	}
	user := a.userID(s.Localpart)
	var creators []string
	// Versions without additional creators ignore the field, as the spec says.
	if verImpl.PrivilegedCreators() {
		for _, c := range body.AdditionalCreators {
			if _, err := mxid.ParseUserID(c); err != nil {
				return httputil.InvalidParam("additional_creators: %q is not a user ID", c)
			}
			if c != user && !slices.Contains(creators, c) {
				creators = append(creators, c)
			}
		}
	}
	newRoomID, err := a.rooms.UpgradeRoom(r.Context(), rsapi.UpgradeRoomRequest{
		RoomID: roomID, UserID: user, NewVersion: version, AdditionalCreators: creators,
	})
	if err != nil {
		return roomError(err)
	}
	a.syncCaughtUp(r)
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"replacement_room": newRoomID})
	return nil
}
