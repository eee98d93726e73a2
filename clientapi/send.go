package clientapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// maxTxnIDLength bounds transaction IDs, which the spec leaves open; they
// are stored, and 255 bytes is ample for a UUID or a counter.
const maxTxnIDLength = 255

// Sending events. A room this server does not know is 404 M_NOT_FOUND
// (roomError): the spec lists no error for it, and saying so is clearer
// than a 403 about a membership in a room that does not exist here.
func (a *API) registerSendRoutes(r *router) {
	r.authed(v3, "/rooms/{roomId}/send/{eventType}/{txnId}", a.sendMessage, http.MethodPut)
	// The state key may be left out, with or without the trailing slash.
	r.authed(v3, "/rooms/{roomId}/state/{eventType}", a.putState, http.MethodPut)
	r.authed(v3, "/rooms/{roomId}/state/{eventType}/", a.putState, http.MethodPut)
	r.authed(v3, "/rooms/{roomId}/state/{eventType}/{stateKey}", a.putState, http.MethodPut)
	r.authed(v3, "/rooms/{roomId}/redact/{eventId}/{txnId}", a.redact, http.MethodPut)
}

// readContent reads a request body that is an event's content: it must be
// a JSON object.
func readContent(r *http.Request) (json.RawMessage, error) {
	data, err := httputil.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := httputil.DecodeJSONObject(data, &obj); err != nil {
		return nil, err
	}
	return bytes.TrimSpace(data), nil
}

// textParam returns a path variable that must be text the databases can
// store: valid UTF-8 without NUL, which PostgreSQL refuses.
func textParam(r *http.Request, name string) (string, error) {
	v := httputil.Vars(r)[name]
	if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		return "", httputil.InvalidParam("The %s in the path is not valid text", name)
	}
	return v, nil
}

// roomParam is the room ID of the path: roomIDParam (directory.go), and
// text.
func roomParam(r *http.Request) (string, error) {
	if _, err := roomIDParam(r); err != nil {
		return "", err
	}
	return textParam(r, "roomId")
}

func txnIDParam(r *http.Request) (string, error) {
	txnID, err := textParam(r, "txnId")
	if err != nil {
		return "", err
	}
	if len(txnID) > maxTxnIDLength {
		return "", httputil.InvalidParam("Transaction ID is longer than %d bytes", maxTxnIDLength)
	}
	return txnID, nil
}

func writeEventID(w http.ResponseWriter, pdu gomatrixserverlib.PDU) {
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"event_id": pdu.EventID()})
}

// sendMessage is PUT /rooms/{roomId}/send/{eventType}/{txnId}: any event
// type without a state key. The sender must be joined; the auth rules say
// so, and roomError turns their refusal into 403 M_FORBIDDEN.
func (a *API) sendMessage(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, err := roomParam(r)
	if err != nil {
		return err
	}
	txnID, err := txnIDParam(r)
	if err != nil {
		return err
	}
	eventType, err := textParam(r, "eventType")
	if err != nil {
		return err
	}
	content, err := readContent(r)
	if err != nil {
		return err
	}
	ev := rsapi.NewEvent{
		RoomID: roomID, Sender: a.userID(s.Localpart), Type: eventType, Content: content,
		TxnID: txnID, DeviceID: s.DeviceID,
	}
	if eventType == spec.MRoomRedaction {
		// Since v1.18 redactions may be sent here in every room version,
		// naming their target in content.redacts.
		if ev.Redacts, ev.Content, err = a.redactsFromContent(r, roomID, content); err != nil {
			return err
		}
	}
	if err := a.checkThreadRoot(r, roomID, content); err != nil { // threadcheck.go
		return err
	}
	pdu, err := a.rooms.SendEvent(r.Context(), ev)
	if err != nil {
		return roomError(err)
	}
	writeEventID(w, pdu)
	return nil
}

// redactsFromContent takes the target of a redaction from its content. In
// room versions before 11 it belongs at the top level of the event and the
// spec says to move it there; from 11 on the roomserver keeps it in the
// content.
func (a *API) redactsFromContent(r *http.Request, roomID string, content json.RawMessage) (string, json.RawMessage, error) {
	var c struct {
		Redacts *string `json:"redacts"`
	}
	if err := json.Unmarshal(content, &c); err != nil || c.Redacts == nil {
		return "", nil, httputil.BadJSON("A redaction needs the ID of the event to redact in content.redacts")
	}
	if !strings.HasPrefix(*c.Redacts, "$") || strings.ContainsRune(*c.Redacts, 0) {
		return "", nil, httputil.BadJSON("content.redacts is not an event ID")
	}
	version, err := a.rooms.RoomVersion(r.Context(), roomID)
	if err != nil {
		return "", nil, roomError(err)
	}
	if redactsAtTopLevel(version) {
		if content, err = sjson.DeleteBytes(content, "redacts"); err != nil {
			return "", nil, httputil.BadJSON("Bad content")
		}
	}
	return *c.Redacts, content, nil
}

// redactsAtTopLevel reports the room versions (1 to 10) whose redaction
// events name their target outside the content.
func redactsAtTopLevel(v gomatrixserverlib.RoomVersion) bool {
	switch v {
	case gomatrixserverlib.RoomVersionV1, gomatrixserverlib.RoomVersionV2, gomatrixserverlib.RoomVersionV3,
		gomatrixserverlib.RoomVersionV4, gomatrixserverlib.RoomVersionV5, gomatrixserverlib.RoomVersionV6,
		gomatrixserverlib.RoomVersionV7, gomatrixserverlib.RoomVersionV8, gomatrixserverlib.RoomVersionV9,
		gomatrixserverlib.RoomVersionV10:
		return true
	}
	return false
}

// putState is PUT /rooms/{roomId}/state/{eventType}/{stateKey}. Any state
// may be sent, m.room.member included (the spec allows membership changes
// here); the auth rules decide.
func (a *API) putState(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, err := roomParam(r)
	if err != nil {
		return err
	}
	eventType, stateKey, err := stateParams(r)
	if err != nil {
		return err
	}
	content, err := readContent(r)
	if err != nil {
		return err
	}
	if eventType == spec.MRoomCanonicalAlias && stateKey == "" {
		if err := a.checkCanonicalAlias(r, roomID, a.userID(s.Localpart), content); err != nil {
			return err
		}
	}
	if eventType == spec.MRoomMember {
		if content, err = a.dropJoinAuthoriserOfRejoin(r.Context(), roomID, stateKey, content); err != nil {
			return err
		}
	}
	pdu, err := a.rooms.SendEvent(r.Context(), rsapi.NewEvent{
		RoomID: roomID, Sender: a.userID(s.Localpart), Type: eventType, StateKey: &stateKey, Content: content,
	})
	if err != nil {
		return roomError(err)
	}
	writeEventID(w, pdu)
	return nil
}

// dropJoinAuthoriserOfRejoin removes join_authorised_via_users_server from
// a join of a user who is joined already (a profile change): the key only
// means something on a transition to join, and other servers check the
// signature of the server it names, so a stale or invalid value would
// get the event refused there.
func (a *API) dropJoinAuthoriserOfRejoin(ctx context.Context, roomID, userID string, content json.RawMessage) (json.RawMessage, error) {
	if !gjson.GetBytes(content, "join_authorised_via_users_server").Exists() || gjson.GetBytes(content, "membership").Str != spec.Join {
		return content, nil
	}
	current, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil || current.Membership != spec.Join {
		return content, nil // the roomserver answers for unknown rooms
	}
	out, err := sjson.DeleteBytes(content, "join_authorised_via_users_server")
	if err != nil {
		return nil, httputil.BadJSON("content cannot be read")
	}
	return out, nil
}

// stateParams returns the event type and state key of a state path.
func stateParams(r *http.Request) (eventType, stateKey string, err error) {
	if eventType, err = textParam(r, "eventType"); err != nil {
		return "", "", err
	}
	stateKey, err = textParam(r, "stateKey")
	return eventType, stateKey, err
}

// badAlias is the spec's 400 M_BAD_ALIAS.
func badAlias(format string, args ...any) error {
	e := httputil.InvalidParam(format, args...)
	e.Code = "M_BAD_ALIAS"
	return e
}

// checkCanonicalAlias checks the aliases an m.room.canonical_alias event
// adds: they must be valid and point at this room. Aliases already in the
// current event are not checked again (the spec says not to), so a room
// whose alias was deleted can still change the rest.
func (a *API) checkCanonicalAlias(r *http.Request, roomID, userID string, content json.RawMessage) error {
	var c struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return httputil.BadJSON("alias must be a string and alt_aliases a list of strings")
	}
	var aliases []string
	if c.Alias != nil && *c.Alias != "" {
		aliases = append(aliases, *c.Alias)
	}
	aliases = append(aliases, c.AltAliases...)
	if len(aliases) == 0 {
		return nil
	}
	// Someone who may not send the event at all hears that from the auth
	// rules, not about the aliases.
	if ok, err := a.rooms.CanSendState(r.Context(), roomID, userID, spec.MRoomCanonicalAlias); err != nil || !ok {
		return roomError(err)
	}
	present := map[string]bool{}
	cur, err := a.rooms.CurrentStateEvent(r.Context(), roomID, spec.MRoomCanonicalAlias, "")
	if err != nil {
		return roomError(err)
	}
	if cur != nil {
		var old struct {
			Alias      any   `json:"alias"`
			AltAliases []any `json:"alt_aliases"`
		}
		_ = json.Unmarshal(cur.Content(), &old) // whatever is there was accepted once
		for _, v := range append(old.AltAliases, old.Alias) {
			if s, ok := v.(string); ok {
				present[s] = true
			}
		}
	}
	for _, alias := range aliases {
		if present[alias] {
			continue
		}
		server, err := validRoomAlias(alias) // directory.go
		if err != nil {
			return httputil.InvalidParam("%q is not a valid room alias: %v", alias, err)
		}
		if server != a.cfg.ServerName {
			// Remote aliases are looked up over federation, which this
			// server does not do yet: they cannot be shown to point here.
			return badAlias("The alias %q is on another server and cannot be checked", alias)
		}
		target, err := a.rooms.ResolveAlias(r.Context(), alias)
		if err != nil {
			return err
		}
		if target != roomID {
			return badAlias("The alias %q does not point to this room", alias)
		}
	}
	return nil
}

// redact is PUT /rooms/{roomId}/redact/{eventId}/{txnId}. The body is the
// redaction's content (reason, and whatever else the client adds). The
// roomserver refuses redacting someone else's event without the power to.
func (a *API) redact(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot redact events")
	}
	roomID, err := roomParam(r)
	if err != nil {
		return err
	}
	eventID, err := textParam(r, "eventId")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(eventID, "$") {
		return httputil.InvalidParam("Invalid event ID")
	}
	txnID, err := txnIDParam(r)
	if err != nil {
		return err
	}
	content, err := readContent(r)
	if err != nil {
		return err
	}
	var c struct {
		Reason *string `json:"reason"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return httputil.BadJSON("reason must be a string")
	}
	// The target goes where the room version wants it (the roomserver puts
	// it in the content from version 11); a client's own copy is dropped.
	if content, err = sjson.DeleteBytes(content, "redacts"); err != nil {
		return httputil.BadJSON("Bad content")
	}
	pdu, err := a.rooms.SendEvent(r.Context(), rsapi.NewEvent{
		RoomID: roomID, Sender: a.userID(s.Localpart), Type: spec.MRoomRedaction, Content: content,
		Redacts: eventID, TxnID: txnID, DeviceID: s.DeviceID,
	})
	if err != nil {
		return roomError(err)
	}
	writeEventID(w, pdu)
	return nil
}
