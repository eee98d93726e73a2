package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Profile field names. Only these two are stored: the accounts component
// has no room for custom fields (spec v1.16), so those cannot be set.
const (
	fieldDisplayName = "displayname"
	fieldAvatarURL   = "avatar_url"
)

// Limits on profile fields (maxDisplayNameLength is in login.go).
const (
	maxAvatarURLLength  = 1024
	maxProfileKeyLength = 255
)

// profileKeyPattern is the spec's grammar for keyName.
var profileKeyPattern = regexp.MustCompile(`^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$`)

func (a *API) registerProfileRoutes(r *router) {
	// Looking profiles up needs no access token (the spec gives GET no
	// security requirement).
	r.public(v3, "/profile/{userId}", a.getProfile, false, http.MethodGet)
	r.public(v3, "/profile/{userId}/{keyName}", a.getProfileField, false, http.MethodGet)
	r.authed(v3, "/profile/{userId}/{keyName}", a.putProfileField, http.MethodPut)
	r.authed(v3, "/profile/{userId}/{keyName}", a.deleteProfileField, http.MethodDelete)
}

// lookupProfile returns the profile of the user the path names.
func (a *API) lookupProfile(r *http.Request) (accounts.Profile, error) {
	uid, err := mxid.ParseUserID(httputil.Vars(r)["userId"])
	if err != nil {
		return accounts.Profile{}, httputil.InvalidParam("Invalid user ID: %v", err)
	}
	if uid.Server != a.cfg.ServerName {
		// Another server's user: ask their server.
		if a.queries == nil {
			return accounts.Profile{}, httputil.NotFound("Profile not found")
		}
		name, avatar, err := a.queries.RemoteProfile(r.Context(), uid.String())
		if err != nil {
			return accounts.Profile{}, err
		}
		return accounts.Profile{DisplayName: name, AvatarURL: avatar}, nil
	}
	// Local localparts are stored lower-case, and user IDs are
	// case-sensitive: @Alice is not @alice.
	if uid.Localpart != strings.ToLower(uid.Localpart) {
		return accounts.Profile{}, httputil.NotFound("Profile not found")
	}
	p, err := a.accounts.Profile(r.Context(), uid.Localpart)
	if errors.Is(err, accounts.ErrNotFound) {
		return accounts.Profile{}, httputil.NotFound("Profile not found")
	}
	return p, err
}

func (a *API) getProfile(w http.ResponseWriter, r *http.Request) error {
	p, err := a.lookupProfile(r)
	if err != nil {
		return err
	}
	resp := map[string]string{}
	if p.DisplayName != "" {
		resp[fieldDisplayName] = p.DisplayName
	}
	if p.AvatarURL != "" {
		resp[fieldAvatarURL] = p.AvatarURL
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// profileKey returns the keyName of the path, checked against the grammar.
func profileKey(r *http.Request) (string, error) {
	key := httputil.Vars(r)["keyName"]
	if len(key) > maxProfileKeyLength {
		return "", &httputil.Error{Status: http.StatusBadRequest, Code: "M_KEY_TOO_LARGE",
			Message: "Profile key is longer than 255 bytes"}
	}
	if !profileKeyPattern.MatchString(key) {
		return "", httputil.InvalidParam("Invalid profile key %q", key)
	}
	return key, nil
}

func (a *API) getProfileField(w http.ResponseWriter, r *http.Request) error {
	key, err := profileKey(r)
	if err != nil {
		return err
	}
	p, err := a.lookupProfile(r)
	if err != nil {
		return err
	}
	var value string
	switch key {
	case fieldDisplayName:
		value = p.DisplayName
	case fieldAvatarURL:
		value = p.AvatarURL
	}
	// Other fields are never stored, so they are always missing.
	if value == "" {
		return httputil.NotFound("The user has no %s", key)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{key: value})
	return nil
}

// changeableProfileKey checks that the logged-in user may change the
// profile field the path names, and returns its key.
func (a *API) changeableProfileKey(r *http.Request, s *accounts.Session) (string, error) {
	userID := httputil.Vars(r)["userId"]
	if _, err := mxid.ParseUserID(userID); err != nil {
		return "", httputil.InvalidParam("Invalid user ID: %v", err)
	}
	if userID != a.userID(s.Localpart) {
		return "", httputil.Forbidden("You can only change your own profile")
	}
	key, err := profileKey(r)
	if err != nil {
		return "", err
	}
	if key != fieldDisplayName && key != fieldAvatarURL {
		return "", httputil.Forbidden("Profile field %q cannot be changed: this server only stores displayname and avatar_url", key)
	}
	if s.IsGuest && key != fieldDisplayName {
		return "", httputil.GuestForbidden("Guests can only change their display name")
	}
	return key, nil
}

func (a *API) putProfileField(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	key, err := a.changeableProfileKey(r, s)
	if err != nil {
		return err
	}
	var body map[string]json.RawMessage
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	raw, ok := body[key]
	if !ok {
		return httputil.MissingParam("The body has no %s", key)
	}
	// null cannot be stored apart from "", and the spec lets servers
	// refuse it; clients clear a field with "" or DELETE.
	var value string
	if string(raw) == "null" || json.Unmarshal(raw, &value) != nil {
		return httputil.BadJSON("%s must be a string", key)
	}
	if key == fieldDisplayName {
		if len(value) > maxDisplayNameLength {
			return httputil.InvalidParam("displayname is longer than %d bytes", maxDisplayNameLength)
		}
		// PostgreSQL text cannot hold NUL.
		if strings.ContainsRune(value, 0) {
			return httputil.InvalidParam("displayname contains a NUL character")
		}
	} else {
		if len(value) > maxAvatarURLLength {
			return httputil.InvalidParam("avatar_url is longer than %d bytes", maxAvatarURLLength)
		}
		if value != "" && !validMXCURI(value) {
			return httputil.InvalidParam("avatar_url must be an mxc:// URI")
		}
	}
	if err := a.setProfileField(r, s.Localpart, key, value); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deleteProfileField(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	key, err := a.changeableProfileKey(r, s)
	if err != nil {
		return err
	}
	if err := a.setProfileField(r, s.Localpart, key, ""); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) setProfileField(r *http.Request, localpart, key, value string) error {
	var err error
	if key == fieldDisplayName {
		err = a.accounts.SetDisplayName(r.Context(), localpart, value)
	} else {
		err = a.accounts.SetAvatarURL(r.Context(), localpart, value)
	}
	if errors.Is(err, accounts.ErrNotFound) {
		return httputil.NotFound("Profile not found")
	}
	if err != nil {
		return err
	}
	return a.updateMemberEvents(r.Context(), localpart, key, value)
}

// updateMemberEvents carries a profile change into the user's member
// event in every room they are joined to, as clients show names and
// avatars from there. A room where the change is refused (say, a server
// ACL or power level rule on member events) keeps the old profile.
func (a *API) updateMemberEvents(ctx context.Context, localpart, key, value string) error {
	userID := a.userID(localpart)
	memberships, err := a.rooms.Memberships(ctx, userID)
	if err != nil {
		return err
	}
	for _, m := range memberships {
		if m.Membership != spec.Join {
			continue
		}
		cur, err := a.rooms.CurrentStateEvent(ctx, m.RoomID, spec.MRoomMember, userID)
		if err != nil || cur == nil {
			continue
		}
		content := map[string]any{}
		if err := json.Unmarshal(cur.Content(), &content); err != nil {
			continue
		}
		if value == "" {
			delete(content, key)
		} else {
			content[key] = value
		}
		raw, err := json.Marshal(content)
		if err != nil {
			return err
		}
		sk := userID
		if _, err := a.rooms.SendEvent(ctx, rsapi.NewEvent{RoomID: m.RoomID, Sender: userID, Type: spec.MRoomMember, StateKey: &sk, Content: raw}); err != nil {
			httputil.LoggerFromContext(ctx).WithError(err).WithField("room_id", m.RoomID).Warn("profile change not carried into a room")
		}
	}
	return nil
}

// validMXCURI checks mxc://<server-name>/<media-id> as the content
// repository section requires: a valid server name, and a media ID of
// only A-Z, a-z, 0-9, _ and - (no path traversal).
func validMXCURI(uri string) bool {
	rest, ok := strings.CutPrefix(uri, "mxc://")
	if !ok {
		return false
	}
	server, mediaID, ok := strings.Cut(rest, "/")
	if !ok || mediaID == "" || config.ValidateServerName(server) != nil {
		return false
	}
	for i := 0; i < len(mediaID); i++ {
		c := mediaID[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
