package clientapi

import (
	"net/http"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// Room versions: the rooms code creates rooms in defaultRoomVersion and
// accepts those in roomVersions, all stable. Keep the two lists here.

var roomVersions = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}

func (a *API) registerCapabilitiesRoutes(r *router) {
	r.authed(v3, "/capabilities", a.capabilities, http.MethodGet)
}

func (a *API) capabilities(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	available := make(map[string]string, len(roomVersions))
	for _, v := range roomVersions {
		available[v] = "stable"
	}
	enabled := func(on bool) map[string]bool { return map[string]bool{"enabled": on} }
	// Guests have no password and may only change their display name.
	profileFields := []string{fieldDisplayName, fieldAvatarURL}
	if s.IsGuest {
		profileFields = []string{fieldDisplayName}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"capabilities": map[string]any{
		"m.change_password": enabled(!s.IsGuest),
		"m.set_displayname": enabled(true),
		"m.set_avatar_url":  enabled(!s.IsGuest),
		// Custom profile fields cannot be stored yet.
		"m.profile_fields":  map[string]any{"enabled": true, "allowed": profileFields},
		"m.3pid_changes":    enabled(false),
		"m.get_login_token": enabled(!s.IsGuest), // logintoken.go
		// Leaving a room never forgets it.
		"m.forget_forced_upon_leave": enabled(false),
		"m.room_versions": map[string]any{
			"default":   a.cfg.DefaultRoomVersion,
			"available": available,
		},
		// m.account_moderation is left out: the spec omits it while
		// suspending and locking are not offered.
	}})
	return nil
}
