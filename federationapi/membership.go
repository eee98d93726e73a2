package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// The membership handshakes of the server-server API, in both directions:
//
//   - inbound (membership_inbound.go): other servers' users joining,
//     leaving and knocking on our rooms through make_*/send_* (a template
//     at our current state; the signed event checked, input, answered
//     with the state and passed on to the room's other servers), and
//     invites of our users to rooms anywhere (/invite: countersigned and
//     stored with the room's stripped state);
//   - outbound (membership_outbound.go): our users joining, leaving,
//     knocking on rooms of other servers and inviting their users, for
//     the client API.
//
// A local user's invite to, knock on or rejection of a room this server
// is not in has no state here: the roomserver keeps it "out of band"
// (InputOutOfBandMembership), as the user's membership and an entry of
// the room stream, and the sync API serves the stripped state stored in
// its unsigned data. A rejection that no server of the room takes is
// recorded here alone (RetireMembership), so the user is out either way.
// A join through another server checks the send_join answer (signatures,
// hashes, the auth rules for every event and for the join at the state)
// and stores it with InputOutliers and InputRemoteJoin.

// MembershipRoomserver is what the membership handshakes need from the
// roomserver.
type MembershipRoomserver interface {
	RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error)
	Membership(ctx context.Context, roomID, userID string) (rsapi.Membership, error)
	Event(ctx context.Context, eventID string) (*rsapi.Event, error)
	CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error)
	JoinAuthoriser(ctx context.Context, roomID, userID string) (string, error)
	ResidentServers(ctx context.Context, roomID string) ([]string, error)
	ServerACLAllows(ctx context.Context, roomID, server string) (bool, error)
	StateBeforeEventWithAuthChain(ctx context.Context, roomID, eventID string) (stateEvents, authChain []gomatrixserverlib.PDU, err error)
	StoredEvents(ctx context.Context, eventIDs []string) (map[string]gomatrixserverlib.PDU, error)
	InputRemoteEvent(ctx context.Context, pdu gomatrixserverlib.PDU) (rsapi.InputResult, error)
	InputOutliers(ctx context.Context, pdus []gomatrixserverlib.PDU) error
	rsapi.FederationMembership
}

// MembershipUserExists reports whether a local user (by localpart) exists and may
// be invited.
type MembershipUserExists func(ctx context.Context, localpart string) (bool, error)

// MembershipForwarder sends an event stored here to the room's other
// servers: the federation sender's SendEventToRoom.
type MembershipForwarder interface {
	SendEventToRoom(ctx context.Context, pdu gomatrixserverlib.PDU, except ...spec.ServerName) error
	// HandedTo records that a server took our event in a handshake: it
	// has it and passes it on, so it is not sent to it again.
	HandedTo(eventID string, server spec.ServerName)
}

// handedTo tells the forwarder that server took our event in a handshake.
func (m *Membership) handedTo(pdu gomatrixserverlib.PDU, server spec.ServerName) {
	if m.forwarder != nil {
		m.forwarder.HandedTo(pdu.EventID(), server)
	}
}

// Membership serves and makes the membership handshakes.
type Membership struct {
	fed        *FederationAPI
	rs         MembershipRoomserver
	userExists MembershipUserExists
	forwarder  MembershipForwarder
	log        *logrus.Entry
}

// forward passes a remote user's membership event that went through us on
// to the room's other servers (not back to its origin).
func (m *Membership) forward(ctx context.Context, pdu gomatrixserverlib.PDU, origin spec.ServerName) {
	if m.forwarder == nil {
		return
	}
	if err := m.forwarder.SendEventToRoom(ctx, pdu, origin); err != nil {
		m.log.WithFields(logrus.Fields{"event_id": pdu.EventID(), "error": err.Error()}).Warn("cannot pass a membership event on to the room's servers")
	}
}

// NewMembership registers the inbound membership endpoints with fed and
// returns the component, whose outbound methods the client API calls.
// forwarder (the sender) passes the joins, leaves and knocks other
// servers' users make through us on to the room's other servers, as the
// spec asks of the resident server; nil does not pass them on. Call it
// before the server starts serving.
func NewMembership(fed *FederationAPI, rs MembershipRoomserver, userExists MembershipUserExists, forwarder MembershipForwarder) *Membership {
	m := &Membership{fed: fed, rs: rs, userExists: userExists, forwarder: forwarder, log: logrus.WithField("component", "federationapi.membership")}
	m.register()
	return m
}

// Bounds on what other servers send or answer.
const (
	// memMaxInviteRoomState bounds the stripped state taken from an invite
	// or knock; the spec's list has seven types.
	memMaxInviteRoomState = 50
	// memMaxTemplateBytes bounds a make_* answer and an /invite answer.
	memMaxTemplateBytes = 1 << 20
	// memMaxSendJoinBytes and memMaxSendJoinEvents bound a send_join answer:
	// the whole state of a large room and its auth chain.
	memMaxSendJoinBytes  = 256 << 20
	memMaxSendJoinEvents = 300_000
	// memMaxJoinServers bounds how many servers one join, knock or leave
	// tries.
	memMaxJoinServers = 10
)

// memSupportedVersions are the room versions this server can join, in the
// order of the ver= parameters it sends.
var memSupportedVersions = func() []gomatrixserverlib.RoomVersion {
	var out []gomatrixserverlib.RoomVersion
	for i := 1; i <= 12; i++ {
		v := gomatrixserverlib.RoomVersion(fmt.Sprint(i))
		if impl, err := gomatrixserverlib.GetRoomVersion(v); err == nil && impl.Stable() {
			out = append(out, v)
		}
	}
	return out
}()

func memVersionSupported(v gomatrixserverlib.RoomVersion) bool {
	return slices.Contains(memSupportedVersions, v)
}

// memUserIDForSender maps sender IDs to user IDs: they are the same in every
// room version this server supports.
func memUserIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// memServerOf returns the server name of a user ID ("" when it has none).
func memServerOf(userID string) spec.ServerName {
	_, server, ok := strings.Cut(userID, ":")
	if !ok {
		return ""
	}
	return spec.ServerName(server)
}

// memRoomIDServer is the server named in a room ID before room version 12
// ("" for version 12 room IDs, which name none).
func memRoomIDServer(roomID string) spec.ServerName {
	return memServerOf(roomID)
}

// memValidRoomID checks the shape of a room ID from a path or a client.
func memValidRoomID(id string) bool {
	return strings.HasPrefix(id, "!") && len(id) > 1 && len(id) <= 255 && !strings.ContainsAny(id, " \x00")
}

// Matrix errors of the membership endpoints.
func memErrIncompatibleVersion(v gomatrixserverlib.RoomVersion) error {
	return (&httputil.Error{Status: http.StatusBadRequest, Code: "M_INCOMPATIBLE_ROOM_VERSION",
		Message: "Your homeserver does not support the features required to join this room"}).With("room_version", string(v))
}

func memErrUnableToAuthoriseJoin(msg string) error {
	return &httputil.Error{Status: http.StatusBadRequest, Code: "M_UNABLE_TO_AUTHORISE_JOIN", Message: msg}
}

func memErrUnableToGrantJoin(msg string) error {
	return &httputil.Error{Status: http.StatusBadRequest, Code: "M_UNABLE_TO_GRANT_JOIN", Message: msg}
}

// memRoomserverError maps the roomserver's typed errors to Matrix errors.
func memRoomserverError(err error) error {
	var (
		notAllowed *rsapi.NotAllowedError
		badEvent   *rsapi.BadEventError
		tooLarge   *rsapi.TooLargeError
		missing    *rsapi.MissingPrevEventsError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &notAllowed):
		return httputil.Forbidden("%s", notAllowed.Reason)
	case errors.As(err, &badEvent):
		return httputil.InvalidParam("%s", badEvent.Reason)
	case errors.As(err, &tooLarge):
		return httputil.TooLarge("%s", tooLarge.Reason)
	case errors.As(err, &missing):
		return httputil.InvalidParam("The event's prev_events are unknown to this server: use a template from make_join, make_leave or make_knock")
	case errors.Is(err, rsapi.ErrRoomNotFound):
		return httputil.NotFound("Unknown room")
	case errors.Is(err, rsapi.ErrEventNotFound):
		return httputil.NotFound("Unknown event")
	}
	return err
}

// memStrippedStateTypes are the state events shared with users invited to or
// knocking on a room, so they can see what it is (client-server API,
// "Stripped state").
var memStrippedStateTypes = []string{spec.MRoomCreate, spec.MRoomName, spec.MRoomAvatar, spec.MRoomTopic,
	spec.MRoomJoinRules, spec.MRoomCanonicalAlias, spec.MRoomEncryption}

// roomStateForInvite returns the full events of the room's stripped state
// types, for invite_room_state and knock_room_state (which carry whole
// PDUs since spec v1.16), plus the member event of extraMember when set.
func (m *Membership) roomStateForInvite(ctx context.Context, roomID, extraMember string) ([]json.RawMessage, error) {
	out := []json.RawMessage{}
	add := func(evType, stateKey string) error {
		ev, err := m.rs.CurrentStateEvent(ctx, roomID, evType, stateKey)
		if err != nil || ev == nil {
			return err
		}
		out = append(out, json.RawMessage(ev.JSON()))
		return nil
	}
	for _, t := range memStrippedStateTypes {
		if err := add(t, ""); err != nil {
			return nil, err
		}
	}
	if extraMember != "" {
		if err := add(spec.MRoomMember, extraMember); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// memStrictStrippedState reports whether a room version must have its
// invite_room_state and knock_room_state as signed PDUs with the create
// event: the spec lets servers accept the older stripped form in room
// versions 1 to 11 while the ecosystem migrates, and asks them to refuse
// it in later versions.
func memStrictStrippedState(v gomatrixserverlib.RoomVersion) bool {
	switch v {
	case "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11":
		return false
	}
	return true
}

// strippedState turns the invite_room_state or knock_room_state another
// server sent into the stripped state events clients see: type,
// state_key, sender and content. Entries that are full PDUs must be of
// the room and validly signed; in room versions before 12 a bad or
// old-style entry is only logged and (when bad) dropped, in later versions
// any is an error, as is a missing create event. It verifies signatures
// with the key ring, so it may fetch keys.
func (m *Membership) strippedState(ctx context.Context, roomID string, version gomatrixserverlib.RoomVersion, entries []json.RawMessage) ([]map[string]any, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, memErrIncompatibleVersion(version)
	}
	strict := memStrictStrippedState(version)
	if len(entries) > memMaxInviteRoomState {
		if strict {
			return nil, httputil.InvalidParam("The room state holds more than %d events", memMaxInviteRoomState)
		}
		entries = entries[:memMaxInviteRoomState]
	}
	type key struct{ typ, stateKey string }
	seen := map[key]bool{}
	out := []map[string]any{}
	haveCreate := false
	bad := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		if strict {
			return httputil.InvalidParam("%s", msg)
		}
		m.log.WithFields(logrus.Fields{"room_id": roomID, "problem": msg}).Info("dropping a stripped state event")
		return nil
	}
	for _, raw := range entries {
		obj := gjson.ParseBytes(raw)
		if !obj.IsObject() {
			if err := bad("a state entry is not an object"); err != nil {
				return nil, err
			}
			continue
		}
		var (
			evType, stateKey, sender string
			content                  json.RawMessage
		)
		if obj.Get("signatures").Exists() || obj.Get("hashes").Exists() {
			pdu, err := verImpl.NewEventFromUntrustedJSON(raw)
			if err != nil || pdu.StateKey() == nil {
				if err := bad("a state entry is not a valid state event of the room's version"); err != nil {
					return nil, err
				}
				continue
			}
			if pdu.RoomID().String() != roomID {
				if err := bad("state event %s is of another room", pdu.EventID()); err != nil {
					return nil, err
				}
				continue
			}
			if err := gomatrixserverlib.VerifyEventSignatures(ctx, pdu, m.fed.KeyRing(), memUserIDForSender); err != nil {
				if err := bad("state event %s is not validly signed", pdu.EventID()); err != nil {
					return nil, err
				}
				continue
			}
			evType, stateKey, sender, content = pdu.Type(), *pdu.StateKey(), string(pdu.SenderID()), pdu.Content()
		} else {
			if err := bad("a state entry is stripped rather than a whole event"); err != nil {
				return nil, err
			}
			t, sk, c := obj.Get("type"), obj.Get("state_key"), obj.Get("content")
			if t.Type != gjson.String || sk.Type != gjson.String || !c.IsObject() {
				continue
			}
			evType, stateKey, sender, content = t.String(), sk.String(), obj.Get("sender").String(), json.RawMessage(c.Raw)
		}
		k := key{evType, stateKey}
		if seen[k] {
			continue
		}
		seen[k] = true
		if evType == spec.MRoomCreate && stateKey == "" {
			haveCreate = true
		}
		out = append(out, map[string]any{"type": evType, "state_key": stateKey, "sender": sender, "content": content})
	}
	if !haveCreate && strict {
		return nil, httputil.InvalidParam("The room state lacks the m.room.create event")
	}
	return out, nil
}

// memStrippedStateServers are the servers of the senders of an event's
// unsigned invite_room_state or knock_room_state: servers likely in the
// room, to leave or join through.
func memStrippedStateServers(pdu gomatrixserverlib.PDU) []spec.ServerName {
	var out []spec.ServerName
	unsigned := gjson.ParseBytes(pdu.Unsigned())
	for _, field := range []string{"invite_room_state", "knock_room_state"} {
		for _, ev := range unsigned.Get(field).Array() {
			if s := memServerOf(ev.Get("sender").String()); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// memReparse parses an event again from its JSON. gomatrixserverlib's Sign
// and SetUnsigned return room version 12 events in the older version's
// form, whose AuthEventIDs leave out the create event; everything signed
// or given unsigned data here goes through this before use.
func memReparse(pdu gomatrixserverlib.PDU, err error) (gomatrixserverlib.PDU, error) {
	if err != nil {
		return nil, err
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(pdu.Version())
	if err != nil {
		return nil, err
	}
	return verImpl.NewEventFromTrustedJSONWithEventID(pdu.EventID(), pdu.JSON(), pdu.Redacted())
}

// sign adds our signature to an event.
func (m *Membership) sign(pdu gomatrixserverlib.PDU) (gomatrixserverlib.PDU, error) {
	return memReparse(pdu.Sign(string(m.fed.ServerName()), m.fed.KeyID(), m.fed.PrivateKey()), nil)
}

// memReadLimited reads a response body up to limit bytes.
func memReadLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("response larger than %d bytes", limit)
	}
	return data, nil
}
