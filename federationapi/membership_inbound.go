package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Inbound membership handshakes: other servers' users joining, leaving
// and knocking on rooms this server is in (make_* builds a template at our
// current state, send_* checks the signed event and inputs it), and
// invites of our users to rooms anywhere.

func (m *Membership) register() {
	f := m.fed
	f.Handle("/_matrix/federation/v1/make_join/{roomId}/{userId}", m.makeJoin, http.MethodGet)
	f.Handle("/_matrix/federation/v1/send_join/{roomId}/{eventId}", m.sendJoin(true), http.MethodPut)
	f.Handle("/_matrix/federation/v2/send_join/{roomId}/{eventId}", m.sendJoin(false), http.MethodPut)
	f.Handle("/_matrix/federation/v1/make_leave/{roomId}/{userId}", m.makeLeave, http.MethodGet)
	f.Handle("/_matrix/federation/v1/send_leave/{roomId}/{eventId}", m.sendLeave(true), http.MethodPut)
	f.Handle("/_matrix/federation/v2/send_leave/{roomId}/{eventId}", m.sendLeave(false), http.MethodPut)
	f.Handle("/_matrix/federation/v1/make_knock/{roomId}/{userId}", m.makeKnock, http.MethodGet)
	f.Handle("/_matrix/federation/v1/send_knock/{roomId}/{eventId}", m.sendKnock, http.MethodPut)
	f.Handle("/_matrix/federation/v1/invite/{roomId}/{eventId}", m.invite(true), http.MethodPut)
	f.Handle("/_matrix/federation/v2/invite/{roomId}/{eventId}", m.invite(false), http.MethodPut)
}

// residentRoom checks a make_*/send_* request's room: known, this server
// joined to it, the origin not denied by its server ACL. It returns the
// room's version and its resident servers.
func (m *Membership) residentRoom(ctx context.Context, roomID string, origin spec.ServerName) (gomatrixserverlib.RoomVersion, []string, error) {
	if !memValidRoomID(roomID) {
		return "", nil, httputil.InvalidParam("Invalid room ID")
	}
	version, err := m.rs.RoomVersion(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return "", nil, httputil.NotFound("Unknown room")
	}
	if err != nil {
		return "", nil, err
	}
	servers, err := m.rs.ResidentServers(ctx, roomID)
	if err != nil {
		return "", nil, memRoomserverError(err)
	}
	if !slices.Contains(servers, string(m.fed.ServerName())) {
		return "", nil, httputil.NotFound("This server is not in room %s", roomID)
	}
	allowed, err := m.rs.ServerACLAllows(ctx, roomID, string(origin))
	if err != nil {
		return "", nil, memRoomserverError(err)
	}
	if !allowed {
		return "", nil, httputil.Forbidden("Server %s is denied by the room's server ACL", origin)
	}
	return version, servers, nil
}

// memTemplateUser checks the {userId} of a make_* request: a user of the
// requesting server.
func memTemplateUser(r *http.Request, origin spec.ServerName) (string, error) {
	userID := httputil.Vars(r)["userId"]
	uid, err := spec.NewUserID(userID, true)
	if err != nil {
		return "", httputil.InvalidParam("Invalid user ID")
	}
	if uid.Domain() != origin {
		return "", httputil.Forbidden("The user %s is not on the requesting server %s", userID, origin)
	}
	return userID, nil
}

// memRequireVersion checks the ver= parameters of make_join and make_knock
// (none means version 1 for make_join).
func memRequireVersion(r *http.Request, version gomatrixserverlib.RoomVersion, defaultV1 bool) error {
	vers := r.URL.Query()["ver"]
	if len(vers) == 0 && defaultV1 {
		vers = []string{"1"}
	}
	if !slices.Contains(vers, string(version)) {
		return memErrIncompatibleVersion(version)
	}
	return nil
}

// writeTemplate answers a make_* request.
func (m *Membership) writeTemplate(w http.ResponseWriter, ctx context.Context, roomID, userID string, content map[string]any) error {
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	tmpl, version, err := m.rs.MembershipTemplate(ctx, roomID, userID, raw)
	if err != nil {
		return memRoomserverError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"room_version": version, "event": tmpl})
	return nil
}

// templateTarget reads what every make_* request names: a room we are in
// and the origin may reach, and a user of the origin.
func (m *Membership) templateTarget(r *http.Request, origin spec.ServerName) (roomID, userID string, version gomatrixserverlib.RoomVersion, err error) {
	roomID = httputil.Vars(r)["roomId"]
	if userID, err = memTemplateUser(r, origin); err != nil {
		return "", "", "", err
	}
	version, _, err = m.residentRoom(r.Context(), roomID, origin)
	return roomID, userID, version, err
}

// makeJoin serves GET /_matrix/federation/v1/make_join/{roomId}/{userId}.
func (m *Membership) makeJoin(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	ctx := r.Context()
	roomID, userID, version, err := m.templateTarget(r, origin)
	if err != nil {
		return err
	}
	if err := memRequireVersion(r, version, true); err != nil {
		return err
	}
	content := map[string]any{"membership": spec.Join}
	authoriser, err := m.restrictedJoinAuthoriser(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if authoriser != "" {
		content["join_authorised_via_users_server"] = authoriser
	}
	return m.writeTemplate(w, ctx, roomID, userID, content)
}

// restrictedJoinAuthoriser returns the local user to name as the
// authoriser of a remote user's join to a restricted room ("" when the
// join needs none). Only allowed rooms this server is in count: in the
// others our idea of the user's membership may be stale. Errors are the
// spec's: M_UNABLE_TO_AUTHORISE_JOIN when we cannot tell, 403 when the
// user meets no condition, M_UNABLE_TO_GRANT_JOIN when they do but no
// local user may invite.
func (m *Membership) restrictedJoinAuthoriser(ctx context.Context, roomID, userID string) (string, error) {
	authoriser, err := m.rs.JoinAuthoriser(ctx, roomID, userID)
	var notAllowed *rsapi.NotAllowedError
	if err != nil && !errors.As(err, &notAllowed) {
		return "", memRoomserverError(err)
	}
	if authoriser == "" && err == nil {
		return "", nil // not restricted, or the user is invited or joined
	}
	// A restricted room: check the allow conditions ourselves.
	ev, err := m.rs.CurrentStateEvent(ctx, roomID, spec.MRoomJoinRules, "")
	if err != nil {
		return "", memRoomserverError(err)
	}
	var rule gomatrixserverlib.JoinRuleContent
	if ev != nil {
		_ = json.Unmarshal(ev.Content(), &rule)
	}
	satisfied, undecidable := false, false
	for _, cond := range rule.Allow {
		if cond.Type != spec.MRoomMembership {
			continue
		}
		servers, err := m.rs.ResidentServers(ctx, cond.RoomID)
		if err != nil || !slices.Contains(servers, string(m.fed.ServerName())) {
			undecidable = true
			continue
		}
		mem, err := m.rs.Membership(ctx, cond.RoomID, userID)
		if err != nil {
			return "", memRoomserverError(err)
		}
		if mem.Membership == spec.Join {
			satisfied = true
			break
		}
	}
	switch {
	case satisfied && authoriser != "":
		return authoriser, nil
	case satisfied:
		return "", memErrUnableToGrantJoin("No user of this server in the room may invite, so none can authorise your join")
	case undecidable:
		return "", memErrUnableToAuthoriseJoin("This server is not in the rooms the join rules name, so it cannot check them")
	}
	return "", httputil.Forbidden("You are not a member of any room that this room's join rules allow")
}

// memMembershipEvent parses and checks the signed event of a send_* or
// /invite request: of the room and event ID of the path, an
// m.room.member event with the given membership, sent by a user of the
// requesting server (about themselves, except for invites), with intact
// hashes.
func memMembershipEvent(r *http.Request, version gomatrixserverlib.RoomVersion, body []byte, origin spec.ServerName, membership string) (gomatrixserverlib.PDU, error) {
	vars := httputil.Vars(r)
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, memErrIncompatibleVersion(version)
	}
	if len(body) > 65536 {
		return nil, httputil.TooLarge("The event is larger than 65536 bytes")
	}
	pdu, err := verImpl.NewEventFromUntrustedJSON(body)
	if err != nil {
		return nil, httputil.BadJSON("The event is not valid for room version %s: %v", version, err)
	}
	if pdu.Redacted() {
		return nil, httputil.InvalidParam("The event's content does not match its hash")
	}
	if pdu.RoomID().String() != vars["roomId"] {
		return nil, httputil.InvalidParam("The event's room ID does not match the path")
	}
	if pdu.EventID() != vars["eventId"] {
		return nil, httputil.InvalidParam("The event's ID does not match the path")
	}
	if pdu.Type() != spec.MRoomMember || pdu.StateKey() == nil {
		return nil, httputil.InvalidParam("The event is not an m.room.member event")
	}
	if got, err := pdu.Membership(); err != nil || got != membership {
		return nil, httputil.InvalidParam("The event's membership is not %s", membership)
	}
	sender := string(pdu.SenderID())
	if _, err := spec.NewUserID(sender, true); err != nil || memServerOf(sender) != origin {
		return nil, httputil.InvalidParam("The event's sender is not a user of the requesting server %s", origin)
	}
	if membership != spec.Invite && *pdu.StateKey() != sender {
		return nil, httputil.InvalidParam("The event's state_key is not its sender")
	}
	return pdu, nil
}

// verifySigned checks every signature the event needs (the sender's
// server, and ours where we sign it: invites and restricted joins).
func (m *Membership) verifySigned(ctx context.Context, pdu gomatrixserverlib.PDU) error {
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, pdu, m.fed.KeyRing(), memUserIDForSender); err != nil {
		m.log.WithFields(logrus.Fields{"event_id": pdu.EventID(), "error": err.Error()}).Info("membership event signature rejected")
		return httputil.InvalidParam("The event's signatures are not valid")
	}
	return nil
}

// inputRemote stores a remote user's membership event in one of our rooms.
func (m *Membership) inputRemote(ctx context.Context, pdu gomatrixserverlib.PDU) error {
	res, err := m.rs.InputRemoteEvent(ctx, pdu)
	if err != nil {
		return memRoomserverError(err)
	}
	if res.Status != rsapi.InputAccepted {
		return httputil.Forbidden("The event is not allowed: %s", res.Reason)
	}
	return nil
}

// memWriteMaybeV1 writes a response, wrapped as [200, body] for the v1
// endpoints (a historical quirk the spec keeps).
func memWriteMaybeV1(w http.ResponseWriter, v1 bool, body any) {
	if v1 {
		httputil.WriteJSON(w, http.StatusOK, []any{http.StatusOK, body})
		return
	}
	httputil.WriteJSON(w, http.StatusOK, body)
}

// sendJoin serves PUT /_matrix/federation/v{1,2}/send_join/{roomId}/{eventId}.
// omit_members is accepted and ignored: the answer always holds the
// whole state (members_omitted false), which the spec allows.
func (m *Membership) sendJoin(v1 bool) Handler {
	return func(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
		ctx := r.Context()
		roomID := httputil.Vars(r)["roomId"]
		version, servers, err := m.residentRoom(ctx, roomID, origin)
		if err != nil {
			return err
		}
		pdu, err := memMembershipEvent(r, version, req.Content(), origin, spec.Join)
		if err != nil {
			return err
		}
		userID := string(pdu.SenderID())
		current, err := m.rs.Membership(ctx, roomID, userID)
		if err != nil {
			return memRoomserverError(err)
		}
		if current.Membership == spec.Ban {
			return httputil.Forbidden("You are banned from this room")
		}
		verImpl := gomatrixserverlib.MustGetRoomVersion(version)
		if via, _ := verImpl.RestrictedJoinServername(pdu.Content()); via != "" {
			// The join names one of our users as its authoriser, which we
			// vouch for by signing it: check the allow conditions first.
			if via != m.fed.ServerName() {
				return httputil.InvalidParam("join_authorised_via_users_server names a user of another server")
			}
			if current.Membership != spec.Join {
				if _, err := m.restrictedJoinAuthoriser(ctx, roomID, userID); err != nil {
					return err
				}
			}
		}
		// Our signature goes on every join we accept (restricted joins need
		// it); the verification below then checks the sender's as well.
		signed, err := m.sign(pdu)
		if err != nil {
			return err
		}
		if err := m.verifySigned(ctx, signed); err != nil {
			return err
		}
		if !(current.Membership == spec.Join && current.EventID == signed.EventID()) {
			if err := m.inputRemote(ctx, signed); err != nil {
				return err
			}
			m.forward(ctx, signed, origin)
		}
		stateEvents, authChain, err := m.rs.StateBeforeEventWithAuthChain(ctx, roomID, signed.EventID())
		if err != nil {
			return memRoomserverError(err)
		}
		m.log.WithFields(logrus.Fields{"room_id": roomID, "user_id": userID, "event_id": signed.EventID()}).Info("remote user joined")
		memWriteMaybeV1(w, v1, map[string]any{
			"origin":          m.fed.ServerName(),
			"state":           memEventJSONs(stateEvents),
			"auth_chain":      memEventJSONs(authChain),
			"event":           json.RawMessage(signed.JSON()),
			"members_omitted": false,
			"servers_in_room": servers,
		})
		return nil
	}
}

func memEventJSONs(events []gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, len(events))
	for i, ev := range events {
		out[i] = json.RawMessage(ev.JSON())
	}
	return out
}

// makeLeave serves GET /_matrix/federation/v1/make_leave/{roomId}/{userId}.
func (m *Membership) makeLeave(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	roomID, userID, _, err := m.templateTarget(r, origin)
	if err != nil {
		return err
	}
	return m.writeTemplate(w, r.Context(), roomID, userID, map[string]any{"membership": spec.Leave})
}

// sendLeave serves PUT /_matrix/federation/v{1,2}/send_leave/{roomId}/{eventId}.
func (m *Membership) sendLeave(v1 bool) Handler {
	return func(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
		ctx := r.Context()
		roomID := httputil.Vars(r)["roomId"]
		version, _, err := m.residentRoom(ctx, roomID, origin)
		if err != nil {
			return err
		}
		pdu, err := memMembershipEvent(r, version, req.Content(), origin, spec.Leave)
		if err != nil {
			return err
		}
		if err := m.verifySigned(ctx, pdu); err != nil {
			return err
		}
		if err := m.inputRemote(ctx, pdu); err != nil {
			return err
		}
		m.forward(ctx, pdu, origin)
		memWriteMaybeV1(w, v1, struct{}{})
		return nil
	}
}

// makeKnock serves GET /_matrix/federation/v1/make_knock/{roomId}/{userId}.
func (m *Membership) makeKnock(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	roomID, userID, version, err := m.templateTarget(r, origin)
	if err != nil {
		return err
	}
	if err := memRequireVersion(r, version, false); err != nil {
		return err
	}
	return m.writeTemplate(w, r.Context(), roomID, userID, map[string]any{"membership": spec.Knock})
}

// sendKnock serves PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}.
func (m *Membership) sendKnock(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
	ctx := r.Context()
	roomID := httputil.Vars(r)["roomId"]
	version, _, err := m.residentRoom(ctx, roomID, origin)
	if err != nil {
		return err
	}
	pdu, err := memMembershipEvent(r, version, req.Content(), origin, spec.Knock)
	if err != nil {
		return err
	}
	if err := m.verifySigned(ctx, pdu); err != nil {
		return err
	}
	if err := m.inputRemote(ctx, pdu); err != nil {
		return err
	}
	m.forward(ctx, pdu, origin)
	state, err := m.roomStateForInvite(ctx, roomID, "")
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"knock_room_state": state})
	return nil
}

// memInviteV2Body is the body of PUT /_matrix/federation/v2/invite.
type memInviteV2Body struct {
	RoomVersion     gomatrixserverlib.RoomVersion `json:"room_version"`
	Event           json.RawMessage               `json:"event"`
	InviteRoomState []json.RawMessage             `json:"invite_room_state"`
}

// invite serves PUT /_matrix/federation/v{1,2}/invite/{roomId}/{eventId}:
// another server asks us to countersign an invite of one of our users.
// The signed invite is stored (out of band when we are not in the room)
// with the room's stripped state in unsigned.invite_room_state, which is
// how the user's /sync shows it.
func (m *Membership) invite(v1 bool) Handler {
	return func(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
		ctx := r.Context()
		roomID := httputil.Vars(r)["roomId"]
		if !memValidRoomID(roomID) {
			return httputil.InvalidParam("Invalid room ID")
		}
		var body memInviteV2Body
		if v1 {
			// v1 sends the bare event, in room version 1 or 2 (the same
			// format); the stripped state may be in its unsigned data.
			body.Event = req.Content()
			body.RoomVersion = gomatrixserverlib.RoomVersionV1
			ev := gjson.ParseBytes(body.Event)
			for _, s := range ev.Get("unsigned.invite_room_state").Array() {
				body.InviteRoomState = append(body.InviteRoomState, json.RawMessage(s.Raw))
				if s.Get("type").String() == spec.MRoomCreate && s.Get("content.room_version").String() == "2" {
					body.RoomVersion = gomatrixserverlib.RoomVersionV2
				}
			}
		} else {
			if err := httputil.DecodeJSONObject(req.Content(), &body); err != nil {
				return err
			}
			if body.RoomVersion == "" || len(body.Event) == 0 {
				return httputil.MissingParam("room_version and event are required")
			}
		}
		if !memVersionSupported(body.RoomVersion) {
			return memErrIncompatibleVersion(body.RoomVersion)
		}
		if known, err := m.rs.RoomVersion(ctx, roomID); err == nil && known != body.RoomVersion {
			return httputil.InvalidParam("Room %s is of version %s, not %s", roomID, known, body.RoomVersion)
		} else if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
			return err
		} else if err == nil {
			allowed, err := m.rs.ServerACLAllows(ctx, roomID, string(origin))
			if err != nil {
				return memRoomserverError(err)
			}
			if !allowed {
				return httputil.Forbidden("Server %s is denied by the room's server ACL", origin)
			}
		}
		pdu, err := memMembershipEvent(r, body.RoomVersion, body.Event, origin, spec.Invite)
		if err != nil {
			return err
		}
		invitee := *pdu.StateKey()
		uid, err := spec.NewUserID(invitee, true)
		if err != nil || uid.Domain() != m.fed.ServerName() {
			return httputil.InvalidParam("The invited user is not a user of this server")
		}
		if ok, err := m.userExists(ctx, uid.Local()); err != nil {
			return err
		} else if !ok {
			return httputil.Forbidden("User %s does not exist", invitee)
		}
		if current, err := m.rs.Membership(ctx, roomID, invitee); err == nil && current.Membership == spec.Join {
			return httputil.Forbidden("User %s is already in the room", invitee)
		}
		stripped, err := m.strippedState(ctx, roomID, body.RoomVersion, body.InviteRoomState)
		if err != nil {
			return err
		}
		signed, err := m.sign(pdu)
		if err != nil {
			return err
		}
		if err := m.verifySigned(ctx, signed); err != nil {
			return err
		}
		stored, err := memReparse(signed.SetUnsigned(map[string]any{"invite_room_state": stripped}))
		if err != nil {
			return err
		}
		if err := m.rs.InputOutOfBandMembership(ctx, stored); err != nil {
			return memRoomserverError(err)
		}
		m.log.WithFields(logrus.Fields{"room_id": roomID, "user_id": invitee, "event_id": signed.EventID()}).Info("invite received")
		memWriteMaybeV1(w, v1, map[string]any{"event": json.RawMessage(signed.JSON())})
		return nil
	}
}
