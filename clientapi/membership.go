package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

func (a *API) registerMembershipRoutes(r *router) {
	// Guests may join (where guest access allows it), leave and list their
	// rooms; the other membership endpoints are not open to them.
	r.authed(v3, "/join/{roomIdOrAlias}", a.joinByIDOrAlias, http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/join", a.joinByID, http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/leave", a.leave, http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/forget", noGuests(a.forget), http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/invite", noGuests(a.invite), http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/kick", noGuests(a.moderate(actionKick)), http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/ban", noGuests(a.moderate(actionBan)), http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/unban", noGuests(a.moderate(actionUnban)), http.MethodPost)
	r.authed(v3, "/knock/{roomIdOrAlias}", noGuests(a.knock), http.MethodPost)
	r.authed(v3, "/joined_rooms", a.joinedRooms, http.MethodGet)
}

// reasonBody is the body of the endpoints whose only field is a reason.
type reasonBody struct {
	Reason string `json:"reason"`
}

// joinBody is the body of the join endpoints: a reason, and any other
// keys the client put there, which go into the member event's content as
// clients (and SyTest) expect, short of the keys the server sets.
type joinBody struct {
	Reason string
	Extra  map[string]json.RawMessage
}

// joinReservedKeys are content keys a join body cannot set.
var joinReservedKeys = map[string]bool{"membership": true, "reason": true, "third_party_signed": true,
	"join_authorised_via_users_server": true, "displayname": true, "avatar_url": true}

func readJoinBody(r *http.Request) (joinBody, error) {
	var raw map[string]json.RawMessage
	if err := readOptionalJSON(r, &raw); err != nil {
		return joinBody{}, err
	}
	var b joinBody
	if reason, ok := raw["reason"]; ok {
		if err := json.Unmarshal(reason, &b.Reason); err != nil {
			return b, httputil.BadJSON("reason must be a string")
		}
	}
	for k, v := range raw {
		if !joinReservedKeys[k] {
			if b.Extra == nil {
				b.Extra = map[string]json.RawMessage{}
			}
			b.Extra[k] = v
		}
	}
	return b, nil
}

// withExtra adds a join body's extra keys to a member content.
func (b joinBody) withExtra(content map[string]any) map[string]any {
	for k, v := range b.Extra {
		if _, set := content[k]; !set {
			content[k] = v
		}
	}
	return content
}

// pathRoomID is the {roomId} of the path, checked for shape only.
func pathRoomID(r *http.Request) (string, error) {
	id := httputil.Vars(r)["roomId"]
	if !validRoomID(id) {
		return "", httputil.InvalidParam("Invalid room ID")
	}
	return id, nil
}

// resolveRoom turns a room ID or an alias into a room ID. Other servers'
// aliases are asked of their server over federation, which also names
// servers to join the room through.
func (a *API) resolveRoom(ctx context.Context, idOrAlias string) (string, []string, error) {
	switch {
	case strings.HasPrefix(idOrAlias, "!"):
		if !validRoomID(idOrAlias) {
			return "", nil, httputil.InvalidParam("Invalid room ID")
		}
		return idOrAlias, nil, nil
	case strings.HasPrefix(idOrAlias, "#"):
		server, err := validRoomAlias(idOrAlias)
		if err != nil {
			return "", nil, httputil.InvalidParam("Invalid room alias: %v", err)
		}
		if server != a.cfg.ServerName {
			remote := a.remoteMembership()
			if remote == nil {
				return "", nil, httputil.NotFound("Room alias %s not found", idOrAlias)
			}
			return remote.ResolveRemoteAlias(ctx, idOrAlias)
		}
		roomID, err := a.rooms.ResolveAlias(ctx, idOrAlias)
		if err != nil {
			return "", nil, err
		}
		if roomID == "" {
			return "", nil, httputil.NotFound("Room alias %s not found", idOrAlias)
		}
		return roomID, nil, nil
	}
	return "", nil, httputil.InvalidParam("Expected a room ID or a room alias")
}

// viaServers are the servers a client names to join or knock through
// (via, and the older server_name), before those an alias lookup gave.
func viaServers(r *http.Request, fromAlias []string) []string {
	q := r.URL.Query()
	out := append(append([]string{}, q["via"]...), q["server_name"]...)
	return append(out, fromAlias...)
}

func (a *API) joinByIDOrAlias(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	req, err := readJoinBody(r)
	if err != nil {
		return err
	}
	roomID, servers, err := a.resolveRoom(r.Context(), httputil.Vars(r)["roomIdOrAlias"])
	if err != nil {
		return err
	}
	return a.join(w, r, s, roomID, viaServers(r, servers), req)
}

func (a *API) joinByID(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	// third_party_signed is not read: third-party invites need an identity
	// server, which this server does not use.
	req, err := readJoinBody(r)
	if err != nil {
		return err
	}
	return a.join(w, r, s, roomID, nil, req)
}

// join joins the user to a room: directly when a user of this server is
// in it, else through other servers (servers first, then those the
// federation API finds: the inviter's, the one in the room ID). A room
// this server knows but no other server can be asked about (a local room
// everyone left) is joined directly if its state allows.
func (a *API) join(w http.ResponseWriter, r *http.Request, s *accounts.Session, roomID string, servers []string, body joinBody) error {
	ctx := r.Context()
	userID := a.userID(s.Localpart)
	handled, err := a.viaRemote(ctx, roomID, userID, func(remote RemoteMembership) error {
		if s.IsGuest {
			return httputil.GuestForbidden("Guests may not join rooms of other servers")
		}
		content, err := a.ownMemberContent(ctx, s.Localpart, spec.Join, body.Reason)
		if err != nil {
			return err
		}
		return remote.JoinRemoteRoom(ctx, roomID, userID, servers, body.withExtra(content))
	})
	if err != nil {
		return roomError(err)
	}
	if handled {
		// A join through another server brings the room's state and its
		// place in the history at once: answer once /sync and /messages
		// show them, so that paging back right after starts at the join.
		a.syncCaughtUp(r)
		httputil.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
		return nil
	}
	current, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return roomError(err)
	}
	if current.Membership != spec.Join {
		if s.IsGuest {
			ev, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomGuestAccess, "")
			if err != nil {
				return roomError(err)
			}
			if ev == nil || gjson.GetBytes(ev.Content(), "guest_access").String() != "can_join" {
				return httputil.GuestForbidden("Guests may not join this room")
			}
		}
		authoriser, err := a.rooms.JoinAuthoriser(ctx, roomID, userID)
		var na *rsapi.NotAllowedError
		if errors.As(err, &na) && na.NoLocalAuthoriser && a.remoteMembership() != nil && !s.IsGuest {
			// The user qualifies but no one here may let them in: another
			// resident server may (client-server API, restricted rooms).
			return a.joinThroughOtherResidents(w, r, s, roomID, servers, body, na)
		}
		if err != nil {
			return roomError(err)
		}
		content, err := a.ownMemberContent(ctx, s.Localpart, spec.Join, body.Reason)
		if err != nil {
			return err
		}
		content = body.withExtra(content)
		if authoriser != "" {
			content["join_authorised_via_users_server"] = authoriser
		}
		if err := a.sendMembership(ctx, roomID, userID, userID, content); err != nil {
			return err
		}
	}
	// Joining a room one is in already changes nothing.
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return nil
}

// joinThroughOtherResidents joins a room this server is in through the
// other servers in it (make_join, send_join), for a restricted join only
// they can authorise.
func (a *API) joinThroughOtherResidents(w http.ResponseWriter, r *http.Request, s *accounts.Session, roomID string, servers []string, body joinBody, local *rsapi.NotAllowedError) error {
	ctx := r.Context()
	userID := a.userID(s.Localpart)
	content, err := a.ownMemberContent(ctx, s.Localpart, spec.Join, body.Reason)
	if err != nil {
		return err
	}
	err = a.remoteMembership().JoinRemoteRoom(ctx, roomID, userID, servers, body.withExtra(content))
	var he *httputil.Error
	if errors.As(err, &he) && he.Status == http.StatusNotFound {
		return roomError(local) // no other server in the room
	}
	if err != nil {
		return roomError(err)
	}
	a.syncCaughtUp(r)
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return nil
}

func (a *API) knock(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	ctx := r.Context()
	var req reasonBody
	if err := readOptionalJSON(r, &req); err != nil {
		return err
	}
	roomID, servers, err := a.resolveRoom(ctx, httputil.Vars(r)["roomIdOrAlias"])
	if err != nil {
		return err
	}
	userID := a.userID(s.Localpart)
	handled, err := a.viaRemote(ctx, roomID, userID, func(remote RemoteMembership) error {
		content, err := a.ownMemberContent(ctx, s.Localpart, spec.Knock, req.Reason)
		if err != nil {
			return err
		}
		return remote.KnockRemoteRoom(ctx, roomID, userID, viaServers(r, servers), content)
	})
	if err != nil {
		return roomError(err)
	}
	if handled {
		httputil.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
		return nil
	}
	version, err := a.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return roomError(err)
	}
	ev, err := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomJoinRules, "")
	if err != nil {
		return roomError(err)
	}
	joinRule := ""
	if ev != nil {
		joinRule = gjson.GetBytes(ev.Content(), "join_rule").String()
	}
	if !knockAllowed(string(version), joinRule) {
		return httputil.Forbidden("You are not allowed to knock on this room")
	}
	content, err := a.ownMemberContent(ctx, s.Localpart, spec.Knock, req.Reason)
	if err != nil {
		return err
	}
	if err := a.sendMembership(ctx, roomID, userID, userID, content); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return nil
}

// knockAllowed reports whether the join rule lets people knock in this
// room version: knock from version 7, knock_restricted from version 10.
// The auth rules check the rest (bans, current membership).
func knockAllowed(version, joinRule string) bool {
	n, err := strconv.Atoi(version)
	if err != nil {
		return false
	}
	switch joinRule {
	case spec.Knock:
		return n >= 7
	case spec.KnockRestricted:
		return n >= 10
	}
	return false
}

func (a *API) leave(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	var req reasonBody
	if err := readOptionalJSON(r, &req); err != nil {
		return err
	}
	userID := a.userID(s.Localpart)
	current, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return roomError(err)
	}
	if current.Membership == spec.Invite {
		if err := a.refuseServerNoticeReject(ctx, s.Localpart, roomID); err != nil { // servernotices.go
			return err
		}
	}
	if (current.Membership == spec.Invite || current.Membership == spec.Knock) && a.outOfBand(ctx, roomID, current) {
		// An invite or knock through another server: rejected or
		// retracted through it (or here alone when it cannot be reached).
		if err := a.remoteMembership().LeaveRemoteRoom(ctx, roomID, userID, req.Reason); err != nil {
			return roomError(err)
		}
	} else if current.Membership == spec.Leave {
		if current.EventID == "" {
			return httputil.Forbidden("You are not a member of this room")
		}
		// Leaving a room one has left already changes nothing.
	} else if err := a.sendMembership(ctx, roomID, userID, userID, memberContent(spec.Leave, req.Reason)); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) forget(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	ctx := r.Context()
	roomID, err := pathRoomID(r)
	if err != nil {
		return err
	}
	userID := a.userID(s.Localpart)
	current, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return roomError(err)
	}
	if current.EventID == "" {
		return httputil.NotFound("You were never a member of this room")
	}
	errInRoom := httputil.BadRequest("User %s is in room %s: leave it first", userID, roomID)
	switch current.Membership {
	case spec.Join, spec.Invite, spec.Knock:
		return errInRoom
	}
	forgotten, err := a.rooms.ForgetRoom(ctx, roomID, userID)
	if err != nil {
		return roomError(err)
	}
	if !forgotten {
		return errInRoom // the membership changed since it was read
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// targetBody is the body of invite, kick, ban and unban. The invite
// endpoint's third-party form has id_server, medium and address instead
// of user_id.
type targetBody struct {
	UserID   *string `json:"user_id"`
	Reason   string  `json:"reason"`
	IDServer *string `json:"id_server"`
	Medium   *string `json:"medium"`
	Address  *string `json:"address"`
}

// readTarget reads the body of invite, kick, ban and unban and checks the
// room exists.
func (a *API) readTarget(r *http.Request) (roomID string, body targetBody, err error) {
	if roomID, err = pathRoomID(r); err != nil {
		return "", body, err
	}
	if err = httputil.ReadJSON(r, &body); err != nil {
		return "", body, err
	}
	if body.UserID == nil {
		if body.IDServer != nil || body.Medium != nil || body.Address != nil {
			return "", body, errNo3PIDInvites()
		}
		return "", body, httputil.MissingParam("user_id is required")
	}
	if _, err := mxid.ParseUserID(*body.UserID); err != nil {
		return "", body, httputil.InvalidParam("Invalid user ID: %v", err)
	}
	if _, err := a.rooms.RoomVersion(r.Context(), roomID); err != nil {
		return "", body, roomError(err)
	}
	return roomID, body, nil
}

func (a *API) invite(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, body, err := a.readTarget(r)
	if err != nil {
		return err
	}
	content, err := a.inviteContent(r.Context(), *body.UserID, body.Reason, false)
	if err != nil {
		return err
	}
	// The auth rules refuse inviters outside the room or without the
	// power, and invitees who are joined or banned. Inviting someone
	// invited already is allowed (the spec answers 200).
	if err := a.sendInvite(r.Context(), roomID, a.userID(s.Localpart), *body.UserID, content); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// Moderation actions on another user's membership.
const (
	actionKick  = "kick"
	actionBan   = "ban"
	actionUnban = "unban"
)

// moderate makes the kick, ban and unban handlers. Kick and unban both set
// the target's membership to leave; the auth rules check the sender's
// power. The checks here give the errors the spec names for targets in
// the wrong state.
func (a *API) moderate(action string) AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
		ctx := r.Context()
		roomID, body, err := a.readTarget(r)
		if err != nil {
			return err
		}
		target := *body.UserID
		membership := spec.Leave
		if action == actionBan {
			membership = spec.Ban
		} else {
			current, err := a.rooms.Membership(ctx, roomID, target)
			if err != nil {
				return roomError(err)
			}
			switch m := current.Membership; {
			case action == actionKick && m != spec.Join && m != spec.Invite && m != spec.Knock:
				return httputil.Forbidden("%s is not in the room", target)
			case action == actionUnban && m != spec.Ban:
				return &httputil.Error{Status: http.StatusForbidden, Code: "M_BAD_STATE", Message: target + " is not banned"}
			}
		}
		if err := a.sendMembership(ctx, roomID, a.userID(s.Localpart), target, memberContent(membership, body.Reason)); err != nil {
			return err
		}
		httputil.WriteJSON(w, http.StatusOK, struct{}{})
		return nil
	}
}

func (a *API) joinedRooms(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	memberships, err := a.rooms.Memberships(r.Context(), a.userID(s.Localpart))
	if err != nil {
		return err
	}
	rooms := []string{}
	for _, m := range memberships {
		if m.Membership == spec.Join {
			rooms = append(rooms, m.RoomID)
		}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string][]string{"joined_rooms": rooms})
	return nil
}

// memberContent is an m.room.member content with an optional reason.
func memberContent(membership, reason string) map[string]any {
	content := map[string]any{"membership": membership}
	if reason != "" {
		content["reason"] = reason
	}
	return content
}

// ownMemberContent is a local user's membership content about
// themselves, with the display name and avatar of their profile.
func (a *API) ownMemberContent(ctx context.Context, localpart, membership, reason string) (map[string]any, error) {
	content := memberContent(membership, reason)
	p, err := a.accounts.Profile(ctx, localpart)
	if errors.Is(err, accounts.ErrNotFound) {
		return content, nil
	}
	if err != nil {
		return nil, err
	}
	addProfile(content, p)
	return content, nil
}

// inviteContent is the content inviting a user. For a local user it
// carries their display name and avatar, as membership events describe
// their target; users of other servers are invited over federation
// (sendInvite), without their profile.
func (a *API) inviteContent(ctx context.Context, userID, reason string, isDirect bool) (map[string]any, error) {
	uid, err := mxid.ParseUserID(userID)
	if err != nil {
		return nil, httputil.InvalidParam("Invalid user ID %q: %v", userID, err)
	}
	if uid.Server != a.cfg.ServerName {
		if a.remoteMembership() == nil {
			return nil, httputil.Forbidden("Cannot invite %s: this server does not federate", userID)
		}
		content := memberContent(spec.Invite, reason)
		if isDirect {
			content["is_direct"] = true
		}
		return content, nil
	}
	// Local localparts are lower-case; user IDs are case-sensitive.
	if uid.Localpart != strings.ToLower(uid.Localpart) {
		return nil, httputil.NotFound("User %s does not exist", userID)
	}
	p, err := a.accounts.Profile(ctx, uid.Localpart)
	if errors.Is(err, accounts.ErrNotFound) {
		return nil, httputil.NotFound("User %s does not exist", userID)
	}
	if err != nil {
		return nil, err
	}
	content := memberContent(spec.Invite, reason)
	if isDirect {
		content["is_direct"] = true
	}
	addProfile(content, p)
	return content, nil
}

func addProfile(content map[string]any, p accounts.Profile) {
	if p.DisplayName != "" {
		content["displayname"] = p.DisplayName
	}
	if p.AvatarURL != "" {
		content["avatar_url"] = p.AvatarURL
	}
}

// sendMembership sends sender's m.room.member event about target.
func (a *API) sendMembership(ctx context.Context, roomID, sender, target string, content map[string]any) error {
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	_, err = a.rooms.SendEvent(ctx, rsapi.NewEvent{
		RoomID: roomID, Sender: sender, Type: spec.MRoomMember, StateKey: &target, Content: raw,
	})
	return roomError(err)
}

// sendInvite invites a user: a local user with a plain event, a user of
// another server through its server, which countersigns the invite.
func (a *API) sendInvite(ctx context.Context, roomID, sender, target string, content map[string]any) error {
	if uid, err := mxid.ParseUserID(target); err == nil && uid.Server != a.cfg.ServerName {
		remote := a.remoteMembership()
		if remote == nil {
			return httputil.Forbidden("Cannot invite %s: this server does not federate", target)
		}
		return roomError(remote.InviteRemoteUser(ctx, roomID, sender, target, content))
	}
	return a.sendMembership(ctx, roomID, sender, target, content)
}

// ---- Rooms of other servers ----

// RemoteMembership is the federation API's side of membership
// (federationapi.Membership): joining, leaving and knocking on rooms this
// server is not in, and inviting users of other servers. Its errors are
// Matrix errors (*httputil.Error) or the roomserver's typed errors.
type RemoteMembership interface {
	// ServerInRoom reports whether a user of this server is joined to the
	// room (false for rooms this server does not know).
	ServerInRoom(ctx context.Context, roomID string) (bool, error)
	ResolveRemoteAlias(ctx context.Context, alias string) (roomID string, servers []string, err error)
	JoinRemoteRoom(ctx context.Context, roomID, userID string, servers []string, content map[string]any) error
	// LeaveRemoteRoom rejects an invite or retracts a knock; when no
	// server of the room can be reached the leave is recorded here alone.
	LeaveRemoteRoom(ctx context.Context, roomID, userID, reason string) error
	KnockRemoteRoom(ctx context.Context, roomID, userID string, servers []string, content map[string]any) error
	InviteRemoteUser(ctx context.Context, roomID, sender, target string, content map[string]any) error
}

func (a *API) remoteMembership() RemoteMembership { return a.remote }

// viaRemote runs a join or knock through other servers when this server
// is not in the room, and reports whether it did. A room this server
// knows the state of, that no other server can be asked about (404), is
// left to the local path: a local room its last member left can still
// be joined.
func (a *API) viaRemote(ctx context.Context, roomID, userID string, fn func(RemoteMembership) error) (bool, error) {
	remote := a.remoteMembership()
	if remote == nil {
		return false, nil
	}
	inRoom, err := remote.ServerInRoom(ctx, roomID)
	if err != nil || inRoom {
		return false, err
	}
	err = fn(remote)
	var he *httputil.Error
	if errors.As(err, &he) && he.Status == http.StatusNotFound {
		if create, cerr := a.rooms.CurrentStateEvent(ctx, roomID, spec.MRoomCreate, ""); cerr == nil && create != nil {
			return false, nil
		}
	}
	return true, err
}

// outOfBand reports whether a user's invite or knock came through another
// server while this server is not in the room: only that server can take
// the rejection.
func (a *API) outOfBand(ctx context.Context, roomID string, current rsapi.Membership) bool {
	remote := a.remoteMembership()
	if remote == nil {
		return false
	}
	if inRoom, err := remote.ServerInRoom(ctx, roomID); err != nil || inRoom {
		return false
	}
	ev, err := a.rooms.Event(ctx, current.EventID)
	// Events with no state here (StateBefore 0) came out of band.
	return err != nil || ev.StateBefore == 0
}
