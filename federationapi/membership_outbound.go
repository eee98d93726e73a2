package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Outbound membership handshakes: what the client API calls when a local
// user joins, leaves or knocks on a room this server is not in, or
// invites a user of another server. Errors are *httputil.Error (a remote
// server's refusal passed on) or the roomserver's typed errors.

// memJoinProcessingTimeout bounds checking and storing a send_join answer,
// which goes on when the client stops waiting: the other server already
// counts the user as joined.
const memJoinProcessingTimeout = 10 * time.Minute

// memRemoteError is a Matrix error answer from another server.
type memRemoteError struct {
	Server      spec.ServerName
	Status      int
	Code        string
	Message     string
	RoomVersion string
}

func (e *memRemoteError) Error() string {
	return fmt.Sprintf("%s answered %d %s: %s", e.Server, e.Status, e.Code, e.Message)
}

// definitive reports whether the answer settles the matter, so that
// asking another server would not help.
func (e *memRemoteError) definitive() bool {
	switch {
	case e.Code == "M_UNABLE_TO_AUTHORISE_JOIN" || e.Code == "M_UNABLE_TO_GRANT_JOIN":
		return false
	case e.Status == http.StatusForbidden, e.Code == "M_INCOMPATIBLE_ROOM_VERSION":
		return true
	}
	return false
}

// memClientError turns the failure of a handshake with other servers into
// what the client sees: another server's refusal (403, an incompatible
// room version, a restricted join it cannot authorise) is passed on; a
// room no server knows is 404; anything else (unreachable servers,
// malformed answers, errors about our own request) is 502.
func memClientError(err error, what string) error {
	var re *memRemoteError
	if errors.As(err, &re) {
		switch {
		case re.Status == http.StatusForbidden:
			code := re.Code
			if !strings.HasPrefix(code, "M_") {
				code = "M_FORBIDDEN"
			}
			return &httputil.Error{Status: http.StatusForbidden, Code: code, Message: re.Message}
		case re.Code == "M_INCOMPATIBLE_ROOM_VERSION":
			return (&httputil.Error{Status: http.StatusBadRequest, Code: re.Code, Message: re.Message}).With("room_version", re.RoomVersion)
		case re.Code == "M_UNABLE_TO_AUTHORISE_JOIN", re.Code == "M_UNABLE_TO_GRANT_JOIN":
			return &httputil.Error{Status: http.StatusBadRequest, Code: re.Code, Message: re.Message}
		case re.Status == http.StatusNotFound:
			return httputil.NotFound("%s: %s", what, re.Message)
		}
	}
	var he *httputil.Error
	if errors.As(err, &he) {
		return he
	}
	if memIsRoomserverError(err) {
		return err
	}
	return &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: what + ": " + err.Error()}
}

func memIsRoomserverError(err error) bool {
	var (
		notAllowed *rsapi.NotAllowedError
		badEvent   *rsapi.BadEventError
		tooLarge   *rsapi.TooLargeError
	)
	return errors.As(err, &notAllowed) || errors.As(err, &badEvent) || errors.As(err, &tooLarge) ||
		errors.Is(err, rsapi.ErrRoomNotFound) || errors.Is(err, rsapi.ErrEventNotFound)
}

// call sends a signed request and decodes a 200 answer of at most limit
// bytes into out; any other answer is a *memRemoteError.
func (m *Membership) call(ctx context.Context, method string, dest spec.ServerName, path string, body any, limit int64, out any) error {
	resp, err := m.fed.DoSigned(ctx, method, dest, path, body)
	if err != nil {
		return fmt.Errorf("%s: %w", dest, err)
	}
	defer resp.Body.Close()
	data, err := memReadLimited(resp.Body, limit)
	if err != nil {
		return fmt.Errorf("%s: %w", dest, err)
	}
	if resp.StatusCode != http.StatusOK {
		js := gjson.ParseBytes(data)
		return &memRemoteError{Server: dest, Status: resp.StatusCode, Code: js.Get("errcode").String(),
			Message: memTruncate(js.Get("error").String(), 500), RoomVersion: js.Get("room_version").String()}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: malformed answer: %w", dest, err)
	}
	return nil
}

func memTruncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// memUnrecognised reports whether an error says the endpoint does not exist
// (so an older version of it may).
func memUnrecognised(err error) bool {
	var re *memRemoteError
	return errors.As(err, &re) && (re.Code == "M_UNRECOGNIZED" ||
		(re.Code == "" && (re.Status == http.StatusNotFound || re.Status == http.StatusMethodNotAllowed)))
}

// memVersionQuery is the ver= parameters naming the room versions we support.
func memVersionQuery() string {
	q := url.Values{}
	for _, v := range memSupportedVersions {
		q.Add("ver", string(v))
	}
	return "?" + q.Encode()
}

// ServerInRoom reports whether a user of this server is joined to the
// room; false for rooms this server does not know.
func (m *Membership) ServerInRoom(ctx context.Context, roomID string) (bool, error) {
	servers, err := m.rs.ResidentServers(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return slices.Contains(servers, string(m.fed.ServerName())), nil
}

// candidateServers lists the servers to try for a handshake about a room
// this server is not in: those the client named, then those the user's
// invite or knock points at (its sender's, the senders of its stripped
// state), and, only when the client named none (but ours), the server in
// the room ID (before room version 12) and the servers joined in whatever
// state we have of the room: a client that names servers means those
// (the spec's via; Complement's restricted join fail-over expects a join
// through a server that cannot authorise it to fail). Ours and invalid
// names are left out; at most memMaxJoinServers.
func (m *Membership) candidateServers(ctx context.Context, roomID, userID string, given []string) []spec.ServerName {
	var out []spec.ServerName
	add := func(s spec.ServerName) {
		if s == "" || s == m.fed.ServerName() || slices.Contains(out, s) || len(out) >= memMaxJoinServers {
			return
		}
		if _, _, ok := spec.ParseAndValidateServerName(s); ok {
			out = append(out, s)
		}
	}
	for _, s := range given {
		add(spec.ServerName(s))
	}
	if cur, err := m.rs.Membership(ctx, roomID, userID); err == nil && cur.EventID != "" &&
		(cur.Membership == spec.Invite || cur.Membership == spec.Knock) {
		if ev, err := m.rs.Event(ctx, cur.EventID); err == nil {
			add(memServerOf(string(ev.SenderID())))
			for _, s := range memStrippedStateServers(ev.PDU) {
				add(s)
			}
		}
	}
	if namedOthers(given, m.fed.ServerName()) {
		return out
	}
	add(memRoomIDServer(roomID))
	if servers, err := m.rs.ResidentServers(ctx, roomID); err == nil {
		for _, s := range servers {
			add(spec.ServerName(s))
		}
	}
	return out
}

// memMakeResponse is the answer to make_join, make_leave and make_knock.
type memMakeResponse struct {
	RoomVersion gomatrixserverlib.RoomVersion `json:"room_version"`
	Event       json.RawMessage               `json:"event"`
}

// buildFromTemplate checks another server's template for the user's
// membership event, as the spec asks (room, type, sender, state key,
// membership), and builds and signs the event: the template's content
// keeps its keys (join_authorised_via_users_server) and gains ours.
func (m *Membership) buildFromTemplate(resp memMakeResponse, roomID, userID, membership string, content map[string]any) (gomatrixserverlib.PDU, error) {
	version := resp.RoomVersion
	if version == "" {
		version = gomatrixserverlib.RoomVersionV1 // "assumed to be either 1 or 2": the same format
	}
	if !memVersionSupported(version) {
		return nil, &memRemoteError{Status: http.StatusBadRequest, Code: "M_INCOMPATIBLE_ROOM_VERSION",
			Message: "The room's version " + string(version) + " is not supported by this server", RoomVersion: string(version)}
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(version)
	var proto gomatrixserverlib.ProtoEvent
	if err := json.Unmarshal(resp.Event, &proto); err != nil {
		return nil, fmt.Errorf("malformed template: %w", err)
	}
	tmplContent := map[string]any{}
	if err := json.Unmarshal(proto.Content, &tmplContent); err != nil {
		return nil, fmt.Errorf("malformed template content")
	}
	if proto.Type != spec.MRoomMember || proto.RoomID != roomID || proto.SenderID != userID ||
		proto.StateKey == nil || *proto.StateKey != userID || tmplContent["membership"] != membership {
		return nil, fmt.Errorf("the template is not a %s of %s in %s", membership, userID, roomID)
	}
	for k, v := range content {
		if k != "membership" && k != "join_authorised_via_users_server" {
			tmplContent[k] = v
		}
	}
	raw, err := json.Marshal(tmplContent)
	if err != nil {
		return nil, err
	}
	proto.Content, proto.Unsigned, proto.Signature, proto.Redacts = raw, nil, nil, ""
	pdu, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), m.fed.ServerName(), m.fed.KeyID(), m.fed.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("cannot build the event from the template: %w", err)
	}
	return pdu, nil
}

// memTryServers runs fn against each server until one succeeds. It returns
// the first definitive refusal, or else the last error.
func memTryServers(servers []spec.ServerName, fn func(s spec.ServerName) error) error {
	var last error
	for _, s := range servers {
		err := fn(s)
		if err == nil {
			return nil
		}
		var re *memRemoteError
		if errors.As(err, &re) && re.definitive() {
			return err
		}
		last = err
	}
	return last
}

// JoinRemoteRoom joins a local user to a room through other servers
// (make_join, send_join), trying the servers given and the others
// candidateServers finds, and stores the room's state and the join.
// content is the join's content (display name, avatar, reason).
func (m *Membership) JoinRemoteRoom(ctx context.Context, roomID, userID string, servers []string, content map[string]any) error {
	if !memValidRoomID(roomID) {
		return httputil.InvalidParam("Invalid room ID")
	}
	candidates := m.candidateServers(ctx, roomID, userID, servers)
	if len(candidates) == 0 {
		return httputil.NotFound("No known servers to join room %s through", roomID)
	}
	err := memTryServers(candidates, func(s spec.ServerName) error {
		err := m.joinVia(ctx, s, roomID, userID, content)
		if err != nil {
			m.log.WithFields(logrus.Fields{"room_id": roomID, "server": s, "error": err.Error()}).Info("join through server failed")
		}
		return err
	})
	if err != nil {
		return memClientError(err, "Cannot join room "+roomID)
	}
	return nil
}

// namedOthers reports whether the client named a server other than ours.
func namedOthers(given []string, self spec.ServerName) bool {
	for _, s := range given {
		if spec.ServerName(s) != self {
			if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(s)); ok {
				return true
			}
		}
	}
	return false
}

// memSendJoinResponse is the answer to send_join.
type memSendJoinResponse struct {
	State          []json.RawMessage `json:"state"`
	AuthChain      []json.RawMessage `json:"auth_chain"`
	Event          json.RawMessage   `json:"event"`
	MembersOmitted bool              `json:"members_omitted"`
}

func (m *Membership) joinVia(ctx context.Context, server spec.ServerName, roomID, userID string, content map[string]any) error {
	var tmpl memMakeResponse
	path := "/_matrix/federation/v1/make_join/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + memVersionQuery()
	if err := m.call(ctx, http.MethodGet, server, path, nil, memMaxTemplateBytes, &tmpl); err != nil {
		return err
	}
	ours, err := m.buildFromTemplate(tmpl, roomID, userID, spec.Join, content)
	if err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	body := json.RawMessage(ours.JSON())
	var resp memSendJoinResponse
	tail := url.PathEscape(roomID) + "/" + url.PathEscape(ours.EventID())
	err = m.call(ctx, http.MethodPut, server, "/_matrix/federation/v2/send_join/"+tail, body, memMaxSendJoinBytes, &resp)
	if memUnrecognised(err) {
		var v1 []json.RawMessage
		if err = m.call(ctx, http.MethodPut, server, "/_matrix/federation/v1/send_join/"+tail, body, memMaxSendJoinBytes, &v1); err == nil {
			if len(v1) != 2 {
				return fmt.Errorf("%s: malformed send_join answer", server)
			}
			if err := json.Unmarshal(v1[1], &resp); err != nil {
				return fmt.Errorf("%s: malformed send_join answer: %w", server, err)
			}
		}
	}
	if err != nil {
		return err
	}
	m.handedTo(ours, server)
	// The other server counts the user as joined now: finish even if the
	// client gives up waiting.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), memJoinProcessingTimeout)
	defer cancel()
	if err := m.storeJoin(ctx, ours, resp, m.fed.KeyRingVia(server)); err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	m.log.WithFields(logrus.Fields{"room_id": roomID, "user_id": userID, "server": server}).Info("joined room through another server")
	return nil
}

// storeJoin checks a send_join answer (every event's signatures and
// hashes, the auth rules for each state and auth chain event at its auth
// events, the join at the state), then stores the state and auth chain as
// outliers and the join at that state.
func (m *Membership) storeJoin(ctx context.Context, ours gomatrixserverlib.PDU, resp memSendJoinResponse, keys gomatrixserverlib.JSONVerifier) error {
	version := ours.Version()
	verImpl := gomatrixserverlib.MustGetRoomVersion(version)
	roomID := ours.RoomID().String()
	if resp.MembersOmitted {
		return errors.New("the send_join answer omits members, which was not asked for")
	}
	if len(resp.State)+len(resp.AuthChain) > memMaxSendJoinEvents {
		return fmt.Errorf("the send_join answer holds more than %d events", memMaxSendJoinEvents)
	}
	join := ours
	if len(resp.Event) > 0 {
		// The resident server's copy carries its signature, which a
		// restricted join needs.
		if ev, err := verImpl.NewEventFromUntrustedJSON(resp.Event); err == nil && ev.EventID() == ours.EventID() && !ev.Redacted() {
			join = ev
		}
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, join, keys, memUserIDForSender); err != nil {
		return fmt.Errorf("the join is not validly signed: %w", err)
	}
	authEvents, stateEvents, err := gomatrixserverlib.CheckStateResponse(ctx, &fclient.RespState{
		StateEvents: gomatrixserverlib.EventJSONs(memRawJSONs(resp.State)),
		AuthEvents:  gomatrixserverlib.EventJSONs(memRawJSONs(resp.AuthChain)),
	}, version, keys, nil, memUserIDForSender)
	if err != nil {
		return fmt.Errorf("invalid send_join answer: %w", err)
	}
	all := map[string]gomatrixserverlib.PDU{}
	var create gomatrixserverlib.PDU
	for _, ev := range append(slices.Clone(authEvents), stateEvents...) {
		if ev.RoomID().String() != roomID {
			return fmt.Errorf("the send_join answer holds event %s of another room", ev.EventID())
		}
		all[ev.EventID()] = ev
	}
	provider, _ := gomatrixserverlib.NewAuthEvents(nil)
	for _, ev := range stateEvents {
		if ev.Type() == spec.MRoomCreate && ev.StateKeyEquals("") {
			create = ev
		}
		if err := provider.AddEvent(ev); err != nil {
			return err
		}
	}
	if create == nil {
		return errors.New("the send_join answer's state has no create event")
	}
	if v := gjson.GetBytes(create.Content(), "room_version").String(); v != string(version) && !(v == "" && version == gomatrixserverlib.RoomVersionV1) {
		return fmt.Errorf("the room's create event says version %q, the template %q", v, version)
	}
	if err := gomatrixserverlib.Allowed(join, provider, memUserIDForSender); err != nil {
		return fmt.Errorf("the join is not allowed by the room's state: %w", err)
	}
	// Keep only events whose auth events are all here or stored already:
	// the roomserver takes outliers only on top of known auth events.
	if err := m.dropUnauthable(ctx, all); err != nil {
		return err
	}
	outliers := make([]gomatrixserverlib.PDU, 0, len(all))
	for _, ev := range all {
		outliers = append(outliers, ev)
	}
	if err := m.rs.InputOutliers(ctx, outliers); err != nil {
		return fmt.Errorf("store the room's state: %w", err)
	}
	state := make([]gomatrixserverlib.PDU, 0, len(stateEvents))
	for _, ev := range stateEvents {
		if _, ok := all[ev.EventID()]; ok {
			state = append(state, ev)
		}
	}
	res, err := m.rs.InputRemoteJoin(ctx, join, state)
	if err != nil {
		return fmt.Errorf("store the join: %w", err)
	}
	if res.Status != rsapi.InputAccepted {
		return &memRemoteError{Status: http.StatusForbidden, Code: "M_FORBIDDEN", Message: "The join is not allowed: " + res.Reason}
	}
	return nil
}

// dropUnauthable removes from events those with an auth event that is
// neither among them nor stored, repeatedly.
func (m *Membership) dropUnauthable(ctx context.Context, events map[string]gomatrixserverlib.PDU) error {
	var unknown []string
	for _, ev := range events {
		for _, a := range ev.AuthEventIDs() {
			if _, ok := events[a]; !ok && !slices.Contains(unknown, a) {
				unknown = append(unknown, a)
			}
		}
	}
	stored := map[string]gomatrixserverlib.PDU{}
	for start := 0; start < len(unknown); start += 10000 {
		part, err := m.rs.StoredEvents(ctx, unknown[start:min(start+10000, len(unknown))])
		if err != nil {
			return err
		}
		for id, ev := range part {
			stored[id] = ev
		}
	}
	for changed := true; changed; {
		changed = false
		for id, ev := range events {
			for _, a := range ev.AuthEventIDs() {
				if _, ok := events[a]; ok {
					continue
				}
				if _, ok := stored[a]; ok {
					continue
				}
				delete(events, id)
				changed = true
				break
			}
		}
	}
	return nil
}

func memRawJSONs(in []json.RawMessage) []spec.RawJSON {
	out := make([]spec.RawJSON, len(in))
	for i, r := range in {
		out[i] = spec.RawJSON(r)
	}
	return out
}

// LeaveRemoteRoom rejects a local user's invite to, or retracts their
// knock on, a room this server is not in: make_leave and send_leave
// through a server of the room, then the leave is stored here. When no
// server of the room accepts it (they are down, or refuse), the leave is
// recorded here alone, so the user is out of the room either way.
func (m *Membership) LeaveRemoteRoom(ctx context.Context, roomID, userID, reason string) error {
	content := map[string]any{}
	if reason != "" {
		content["reason"] = reason
	}
	candidates := m.candidateServers(ctx, roomID, userID, nil)
	err := memTryServers(candidates, func(s spec.ServerName) error {
		return m.leaveVia(ctx, s, roomID, userID, content)
	})
	if err == nil && len(candidates) > 0 {
		return nil
	}
	if err == nil {
		err = errors.New("no server of the room is known")
	}
	m.log.WithFields(logrus.Fields{"room_id": roomID, "user_id": userID, "error": err.Error()}).
		Warn("cannot leave the room through another server: recording the leave here only")
	if _, rerr := m.rs.RetireMembership(ctx, roomID, userID, reason); rerr != nil {
		return rerr
	}
	return nil
}

func (m *Membership) leaveVia(ctx context.Context, server spec.ServerName, roomID, userID string, content map[string]any) error {
	var tmpl memMakeResponse
	path := "/_matrix/federation/v1/make_leave/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID)
	if err := m.call(ctx, http.MethodGet, server, path, nil, memMaxTemplateBytes, &tmpl); err != nil {
		return err
	}
	if version, err := m.rs.RoomVersion(ctx, roomID); err == nil && tmpl.RoomVersion != "" && tmpl.RoomVersion != version {
		return fmt.Errorf("%s: the room's version is %s, not %s", server, version, tmpl.RoomVersion)
	}
	leave, err := m.buildFromTemplate(tmpl, roomID, userID, spec.Leave, content)
	if err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	body := json.RawMessage(leave.JSON())
	tail := url.PathEscape(roomID) + "/" + url.PathEscape(leave.EventID())
	var out json.RawMessage
	err = m.call(ctx, http.MethodPut, server, "/_matrix/federation/v2/send_leave/"+tail, body, memMaxTemplateBytes, &out)
	if memUnrecognised(err) {
		err = m.call(ctx, http.MethodPut, server, "/_matrix/federation/v1/send_leave/"+tail, body, memMaxTemplateBytes, &out)
	}
	if err != nil {
		return err
	}
	m.handedTo(leave, server)
	return m.rs.InputOutOfBandMembership(ctx, leave)
}

// KnockRemoteRoom knocks on a room of another server for a local user
// (make_knock, send_knock) and stores the knock with the room's stripped
// state, which the user's /sync shows.
func (m *Membership) KnockRemoteRoom(ctx context.Context, roomID, userID string, servers []string, content map[string]any) error {
	if !memValidRoomID(roomID) {
		return httputil.InvalidParam("Invalid room ID")
	}
	candidates := m.candidateServers(ctx, roomID, userID, servers)
	if len(candidates) == 0 {
		return httputil.NotFound("No known servers to knock on room %s through", roomID)
	}
	err := memTryServers(candidates, func(s spec.ServerName) error {
		return m.knockVia(ctx, s, roomID, userID, content)
	})
	if err != nil {
		return memClientError(err, "Cannot knock on room "+roomID)
	}
	return nil
}

func (m *Membership) knockVia(ctx context.Context, server spec.ServerName, roomID, userID string, content map[string]any) error {
	var tmpl memMakeResponse
	path := "/_matrix/federation/v1/make_knock/" + url.PathEscape(roomID) + "/" + url.PathEscape(userID) + memVersionQuery()
	if err := m.call(ctx, http.MethodGet, server, path, nil, memMaxTemplateBytes, &tmpl); err != nil {
		return err
	}
	knock, err := m.buildFromTemplate(tmpl, roomID, userID, spec.Knock, content)
	if err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	var resp struct {
		KnockRoomState []json.RawMessage `json:"knock_room_state"`
	}
	tail := url.PathEscape(roomID) + "/" + url.PathEscape(knock.EventID())
	if err := m.call(ctx, http.MethodPut, server, "/_matrix/federation/v1/send_knock/"+tail, json.RawMessage(knock.JSON()), memMaxTemplateBytes, &resp); err != nil {
		return err
	}
	m.handedTo(knock, server)
	stripped, err := m.strippedState(ctx, roomID, knock.Version(), resp.KnockRoomState)
	if err != nil {
		// The knock is made; only its description of the room is bad.
		m.log.WithFields(logrus.Fields{"room_id": roomID, "server": server, "error": err.Error()}).Info("ignoring invalid knock_room_state")
		stripped = []map[string]any{}
	}
	stored, err := memReparse(knock.SetUnsigned(map[string]any{"knock_room_state": stripped}))
	if err != nil {
		return err
	}
	return m.rs.InputOutOfBandMembership(ctx, stored)
}

// InviteRemoteUser invites a user of another server to one of our rooms:
// the invite is built at the room's current state, countersigned by the
// invitee's server (/invite v2, or v1 for room versions 1 and 2), checked
// and stored. The event stream takes it to the room's other servers.
func (m *Membership) InviteRemoteUser(ctx context.Context, roomID, sender, target string, content map[string]any) error {
	uid, err := spec.NewUserID(target, true)
	if err != nil {
		return httputil.InvalidParam("Invalid user ID %q", target)
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return err
	}
	invite, err := m.rs.BuildMembershipEvent(ctx, rsapi.NewEvent{
		RoomID: roomID, Sender: sender, Type: spec.MRoomMember, StateKey: &target, Content: raw,
	})
	if err != nil {
		return err
	}
	state, err := m.roomStateForInvite(ctx, roomID, sender)
	if err != nil {
		return err
	}
	server := uid.Domain()
	version := invite.Version()
	tail := url.PathEscape(roomID) + "/" + url.PathEscape(invite.EventID())
	var resp struct {
		Event json.RawMessage `json:"event"`
	}
	err = m.call(ctx, http.MethodPut, server, "/_matrix/federation/v2/invite/"+tail, map[string]any{
		"room_version": version, "event": json.RawMessage(invite.JSON()), "invite_room_state": state,
	}, memMaxTemplateBytes, &resp)
	if memUnrecognised(err) && (version == gomatrixserverlib.RoomVersionV1 || version == gomatrixserverlib.RoomVersionV2) {
		withState, serr := invite.SetUnsigned(map[string]any{"invite_room_state": state})
		if serr != nil {
			return serr
		}
		var v1 []json.RawMessage
		if err = m.call(ctx, http.MethodPut, server, "/_matrix/federation/v1/invite/"+tail, json.RawMessage(withState.JSON()), memMaxTemplateBytes, &v1); err == nil {
			if len(v1) != 2 {
				err = fmt.Errorf("%s: malformed invite answer", server)
			} else {
				resp.Event = json.RawMessage(gjson.GetBytes(v1[1], "event").Raw)
			}
		}
	}
	if err != nil {
		return memClientError(err, "Cannot invite "+target)
	}
	signed, err := gomatrixserverlib.MustGetRoomVersion(version).NewEventFromUntrustedJSON(resp.Event)
	if err != nil || signed.EventID() != invite.EventID() || signed.Redacted() {
		return memClientError(fmt.Errorf("%s returned a different invite", server), "Cannot invite "+target)
	}
	if err := gomatrixserverlib.VerifyEventSignatures(ctx, signed, m.fed.KeyRing(), memUserIDForSender); err != nil {
		return memClientError(fmt.Errorf("%s returned an invite without valid signatures: %w", server, err), "Cannot invite "+target)
	}
	res, err := m.rs.InputRemoteEvent(ctx, signed)
	if err != nil {
		return err
	}
	if res.Status != rsapi.InputAccepted {
		return &rsapi.NotAllowedError{Reason: res.Reason}
	}
	return nil
}

// ResolveRemoteAlias asks an alias's server which room it names
// (/query/directory), and returns the room and the servers to join it
// through.
func (m *Membership) ResolveRemoteAlias(ctx context.Context, alias string) (string, []string, error) {
	server := memServerOf(alias)
	if server == "" {
		return "", nil, httputil.InvalidParam("Invalid room alias")
	}
	var resp fclient.RespDirectory
	err := m.call(ctx, http.MethodGet, server, "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape(alias), nil, memMaxTemplateBytes, &resp)
	if err != nil {
		// Unknown there, or no answer: either way the alias names no room
		// we can find.
		var re *memRemoteError
		if !errors.As(err, &re) || re.Status == http.StatusNotFound {
			return "", nil, httputil.NotFound("Room alias %s not found: %v", alias, err)
		}
		return "", nil, memClientError(err, "Cannot resolve room alias "+alias)
	}
	if !memValidRoomID(resp.RoomID) {
		return "", nil, memClientError(fmt.Errorf("%s answered with an invalid room ID", server), "Cannot resolve room alias "+alias)
	}
	servers := []string{}
	for _, s := range resp.Servers {
		if _, _, ok := spec.ParseAndValidateServerName(s); ok && len(servers) < memMaxJoinServers {
			servers = append(servers, string(s))
		}
	}
	return resp.RoomID, servers, nil
}
