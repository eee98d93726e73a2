package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Bounds on one /createRoom: every entry becomes an event written in the
// room's creation transaction.
const (
	maxCreateInvites      = 1000
	maxCreateInitialState = 1000
)

// Room creation presets.
const (
	presetPrivate        = "private_chat"
	presetTrustedPrivate = "trusted_private_chat"
	presetPublic         = "public_chat"
)

func (a *API) registerCreateRoomRoutes(r *router) {
	r.authed(v3, "/createRoom", noGuests(a.createRoom), http.MethodPost)
}

type createRoomRequest struct {
	Visibility                string                     `json:"visibility"`
	RoomAliasName             *string                    `json:"room_alias_name"`
	Name                      *string                    `json:"name"`
	Topic                     *string                    `json:"topic"`
	Invite                    []string                   `json:"invite"`
	Invite3PID                []json.RawMessage          `json:"invite_3pid"`
	RoomVersion               string                     `json:"room_version"`
	CreationContent           map[string]json.RawMessage `json:"creation_content"`
	InitialState              []initialStateEvent        `json:"initial_state"`
	Preset                    string                     `json:"preset"`
	IsDirect                  bool                       `json:"is_direct"`
	PowerLevelContentOverride map[string]json.RawMessage `json:"power_level_content_override"`
}

type initialStateEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

func (a *API) createRoom(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	var req createRoomRequest
	if err := readOptionalJSON(r, &req); err != nil {
		return err
	}
	plan, err := a.planRoom(r.Context(), s.Localpart, &req)
	if err != nil {
		return err
	}
	roomID, err := a.rooms.CreateRoom(r.Context(), plan)
	var notAllowed *rsapi.NotAllowedError
	switch {
	case errors.Is(err, rsapi.ErrAliasInUse):
		return errRoomInUse()
	case errors.As(err, &notAllowed):
		// The auth rules refused one of the room's first events: the
		// request's state contradicts itself (power levels too low, ...).
		return errInvalidRoomState("The room's initial state is invalid: " + notAllowed.Reason)
	case err != nil:
		return roomError(err)
	}
	a.inviteRemoteAfterCreate(r.Context(), roomID, s.Localpart, &req)
	a.syncCaughtUp(r)
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return nil
}

// inviteRemoteAfterCreate invites the users of other servers among the
// request's invitees once the room exists: their servers must countersign
// each invite, so they cannot be among the room's first events. The room
// stands whether or not they succeed; failures are logged.
func (a *API) inviteRemoteAfterCreate(ctx context.Context, roomID, localpart string, req *createRoomRequest) {
	creator := a.userID(localpart)
	var done []string
	for _, userID := range req.Invite {
		if a.isLocalUser(userID) || slices.Contains(done, userID) {
			continue
		}
		done = append(done, userID)
		content, err := a.inviteContent(ctx, userID, "", req.IsDirect)
		if err == nil {
			err = a.sendInvite(ctx, roomID, creator, userID, content)
		}
		if err != nil {
			logrus.WithFields(logrus.Fields{"room_id": roomID, "user_id": userID, "error": err.Error()}).
				Warn("cannot invite a user of another server to a new room")
		}
	}
}

// isLocalUser reports whether a (valid) user ID is of this server.
func (a *API) isLocalUser(userID string) bool {
	uid, err := mxid.ParseUserID(userID)
	return err == nil && uid.Server == a.cfg.ServerName
}

func errInvalidRoomState(msg string) error {
	return &httputil.Error{Status: http.StatusBadRequest, Code: "M_INVALID_ROOM_STATE", Message: msg}
}

func errRoomInUse() error {
	return &httputil.Error{Status: http.StatusBadRequest, Code: "M_ROOM_IN_USE", Message: "Room alias already taken"}
}

// planRoom checks the request and turns it into the room's events, in the
// order the spec gives: create, the creator's join, power levels, the
// canonical alias, the preset's events, initial_state, name and topic,
// invites.
func (a *API) planRoom(ctx context.Context, localpart string, req *createRoomRequest) (rsapi.CreateRoomRequest, error) {
	creator := a.userID(localpart)
	var plan rsapi.CreateRoomRequest
	switch req.Visibility {
	case "", "private":
	case "public":
		plan.Publish = true
	default:
		return plan, httputil.InvalidParam("visibility must be public or private")
	}
	preset := req.Preset
	switch preset {
	case "":
		preset = presetPrivate
		if req.Visibility == "public" {
			preset = presetPublic
		}
	case presetPrivate, presetTrustedPrivate, presetPublic:
	default:
		return plan, httputil.InvalidParam("Unknown preset %q", req.Preset)
	}
	version := req.RoomVersion
	if version == "" {
		version = a.cfg.DefaultRoomVersion
	}
	if !slices.Contains(roomVersions, version) {
		return plan, httputil.UnsupportedRoomV("This server does not support room version %q", version)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	creatorsUnlisted := verImpl.PrivilegedCreators() // room version 12 and later
	plan.Version = verImpl.Version()
	plan.Creator = creator

	if len(req.Invite3PID) > 0 {
		return plan, errNo3PIDInvites()
	}
	if len(req.Invite) > maxCreateInvites {
		return plan, httputil.InvalidParam("At most %d users can be invited when creating a room", maxCreateInvites)
	}
	if len(req.InitialState) > maxCreateInitialState {
		return plan, httputil.InvalidParam("initial_state holds at most %d events", maxCreateInitialState)
	}
	var invites []rsapi.StateEvent
	var invitees []string
	for _, userID := range req.Invite {
		if slices.Contains(invitees, userID) {
			continue
		}
		if userID == creator {
			return plan, httputil.InvalidParam("You cannot invite yourself")
		}
		content, err := a.inviteContent(ctx, userID, "", req.IsDirect)
		if err != nil {
			return plan, err
		}
		invitees = append(invitees, userID)
		if !a.isLocalUser(userID) {
			continue // invited over federation once the room exists (inviteRemoteAfterCreate)
		}
		invites = append(invites, rsapi.StateEvent{Type: spec.MRoomMember, StateKey: userID, Content: content})
	}

	createContent, err := creationContent(req.CreationContent, creator, creatorsUnlisted, preset == presetTrustedPrivate, invitees)
	if err != nil {
		return plan, err
	}
	plan.CreateContent = createContent

	if req.RoomAliasName != nil {
		alias, err := a.newRoomAlias(*req.RoomAliasName)
		if err != nil {
			return plan, err
		}
		// Checked again in the creation transaction; this spares building
		// the room when the alias is plainly taken.
		if existing, err := a.rooms.ResolveAlias(ctx, alias); err != nil {
			return plan, err
		} else if existing != "" {
			return plan, errRoomInUse()
		}
		plan.Alias = alias
	}

	// Every event but the create event is checked by the auth rules, so
	// only the shape of initial_state is checked here.
	initial := make([]rsapi.StateEvent, 0, len(req.InitialState))
	overridden := map[string]bool{}
	for i, ev := range req.InitialState {
		if ev.Type == "" {
			return plan, httputil.BadJSON("initial_state[%d] has no type", i)
		}
		if !isJSONObject(ev.Content) {
			return plan, httputil.BadJSON("initial_state[%d].content must be an object", i)
		}
		if ev.Type == spec.MRoomCreate {
			return plan, errInvalidRoomState("initial_state cannot hold an m.room.create event: use creation_content")
		}
		// name and topic overwrite initial_state's events of their types.
		if ev.StateKey == "" && (ev.Type == spec.MRoomName && req.Name != nil || ev.Type == spec.MRoomTopic && req.Topic != nil) {
			continue
		}
		if ev.StateKey == "" {
			overridden[ev.Type] = true
		}
		initial = append(initial, rsapi.StateEvent{Type: ev.Type, StateKey: ev.StateKey, Content: ev.Content})
	}

	join, err := a.ownMemberContent(ctx, localpart, spec.Join, "")
	if err != nil {
		return plan, err
	}
	events := []rsapi.StateEvent{
		{Type: spec.MRoomMember, StateKey: creator, Content: join},
		{Type: spec.MRoomPowerLevels, Content: powerLevels(creator, preset, creatorsUnlisted, invitees, req.PowerLevelContentOverride)},
	}
	if plan.Alias != "" {
		events = append(events, rsapi.StateEvent{Type: spec.MRoomCanonicalAlias, Content: map[string]string{"alias": plan.Alias}})
	}
	// initial_state takes precedence over the preset: a preset event it
	// replaces is left out rather than sent and overwritten.
	for _, ev := range presetEvents(preset) {
		if !overridden[ev.Type] {
			events = append(events, ev)
		}
	}
	events = append(events, initial...)
	if req.Name != nil {
		events = append(events, rsapi.StateEvent{Type: spec.MRoomName, Content: map[string]string{"name": *req.Name}})
	}
	if req.Topic != nil {
		events = append(events, rsapi.StateEvent{Type: spec.MRoomTopic, Content: topicContent(*req.Topic)})
	}
	plan.InitialState = append(events, invites...)
	return plan, nil
}

// creationContent is the create event's content: the request's
// creation_content without the keys the server sets, and in room version
// 12 the trusted_private_chat invitees among the additional creators.
func creationContent(requested map[string]json.RawMessage, creator string, creatorsUnlisted, trusted bool, invitees []string) (map[string]any, error) {
	content := make(map[string]any, len(requested)+1)
	for k, v := range requested {
		content[k] = v
	}
	delete(content, "creator")
	delete(content, "room_version")
	if creatorsUnlisted {
		var extra []string
		if raw, ok := requested["additional_creators"]; ok {
			if err := json.Unmarshal(raw, &extra); err != nil {
				return nil, httputil.BadJSON("creation_content.additional_creators must be an array of user IDs")
			}
		}
		if trusted {
			extra = append(extra, invitees...)
		}
		var creators []string
		for _, c := range extra {
			if _, err := spec.NewUserID(c, true); err != nil {
				return nil, httputil.InvalidParam("Invalid user ID %q in additional_creators", c)
			}
			if c != creator && !slices.Contains(creators, c) {
				creators = append(creators, c)
			}
		}
		delete(content, "additional_creators")
		if len(creators) > 0 {
			content["additional_creators"] = creators
		}
	}
	// The auth rules read these keys; content they cannot parse would make
	// a room in which nothing can be sent.
	raw, err := json.Marshal(content)
	if err != nil {
		return nil, httputil.BadJSON("creation_content is not valid JSON")
	}
	var parsed gomatrixserverlib.CreateContent
	if err := json.Unmarshal(raw, &parsed); err != nil {
		return nil, httputil.BadJSON("creation_content has a key of the wrong type: %v", err)
	}
	return content, nil
}

// powerLevels is the default power levels content with the request's
// override applied on top (key by key, as the spec says).
func powerLevels(creator, preset string, creatorsUnlisted bool, invitees []string, override map[string]json.RawMessage) map[string]any {
	users := map[string]any{}
	tombstone := 100
	if creatorsUnlisted {
		// Creators have infinite power and must not be listed. The spec
		// wants the tombstone level above state_default; 150 also keeps
		// upgrades from admins at 100, as creators can always upgrade.
		tombstone = 150
	} else {
		users[creator] = 100
		if preset == presetTrustedPrivate {
			for _, u := range invitees {
				users[u] = 100
			}
		}
	}
	// The spec leaves the invite level to the server. In private chats the
	// members are people who were invited and may bring in others; in
	// public rooms anyone can join, so inviting (which reaches people
	// outside the room) is kept for moderators to limit invite spam.
	invite := 0
	if preset == presetPublic {
		invite = 50
	}
	content := map[string]any{
		"users":         users,
		"users_default": 0,
		"events": map[string]int{
			spec.MRoomName:              50,
			spec.MRoomPowerLevels:       100,
			spec.MRoomHistoryVisibility: 100,
			spec.MRoomCanonicalAlias:    50,
			"m.room.avatar":             50,
			"m.room.tombstone":          tombstone,
			"m.room.server_acl":         100,
			spec.MRoomEncryption:        100,
		},
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         invite,
	}
	for k, v := range override {
		content[k] = v
	}
	return content
}

// presetEvents are the join rules, history visibility and guest access a
// preset sets.
func presetEvents(preset string) []rsapi.StateEvent {
	joinRule, guestAccess := spec.Invite, "can_join"
	if preset == presetPublic {
		joinRule, guestAccess = spec.Public, "forbidden"
	}
	return []rsapi.StateEvent{
		{Type: spec.MRoomJoinRules, Content: map[string]string{"join_rule": joinRule}},
		{Type: spec.MRoomHistoryVisibility, Content: map[string]string{"history_visibility": "shared"}},
		{Type: spec.MRoomGuestAccess, Content: map[string]string{"guest_access": guestAccess}},
	}
}

// topicContent is an m.room.topic content with the text/plain
// representation in m.topic as well (spec v1.15).
func topicContent(topic string) map[string]any {
	return map[string]any{
		"topic":   topic,
		"m.topic": map[string]any{"m.text": []map[string]string{{"body": topic, "mimetype": "text/plain"}}},
	}
}

// newRoomAlias makes the local alias for room_alias_name, checked against
// the alias grammar.
func (a *API) newRoomAlias(name string) (string, error) {
	alias := "#" + name + ":" + a.cfg.ServerName
	if _, err := validRoomAlias(alias); err != nil || strings.Contains(name, ":") {
		return "", httputil.InvalidParam("room_alias_name does not make a valid alias localpart")
	}
	return alias, nil
}

// errNo3PIDInvites answers third-party invites, which need an identity
// server: this server trusts none.
func errNo3PIDInvites() error {
	return &httputil.Error{Status: http.StatusBadRequest, Code: "M_SERVER_NOT_TRUSTED",
		Message: "Third-party invites need an identity server, and this server does not use any"}
}

func isJSONObject(raw json.RawMessage) bool {
	var obj map[string]json.RawMessage
	return len(raw) > 0 && raw[0] == '{' && json.Unmarshal(raw, &obj) == nil
}
