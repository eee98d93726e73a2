package clientapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// Limits on account data.
const (
	maxAccountDataSize = 64 << 10
	// maxEventTypeLength is the spec's limit on an event type, in bytes.
	maxEventTypeLength = 255
	maxRoomIDLength    = 255
)

// serverManagedAccountData are the types clients may read but not set:
// the server keeps them (read markers and push rules have their own APIs).
var serverManagedAccountData = []string{"m.fully_read", "m.push_rules"}

func (a *API) registerAccountDataRoutes(r *router) {
	r.authed(v3, "/user/{userId}/account_data/{type}", a.getAccountData, http.MethodGet)
	r.authed(v3, "/user/{userId}/account_data/{type}", a.putAccountData, http.MethodPut)
	r.authed(v3, "/user/{userId}/rooms/{roomId}/account_data/{type}", a.getAccountData, http.MethodGet)
	r.authed(v3, "/user/{userId}/rooms/{roomId}/account_data/{type}", a.putAccountData, http.MethodPut)
}

// requireOwnUser refuses a request whose path names another user: account
// data and filters are private.
func (a *API) requireOwnUser(r *http.Request, s *accounts.Session) error {
	if httputil.Vars(r)["userId"] != a.userID(s.Localpart) {
		return httputil.Forbidden("You can only access your own data")
	}
	return nil
}

// accountDataKey checks the request and returns the room ("" for global
// data) and type the path names.
func (a *API) accountDataKey(r *http.Request, s *accounts.Session) (roomID, dataType string, err error) {
	if err := a.requireOwnUser(r, s); err != nil {
		return "", "", err
	}
	// The guest access module does not list account data among what
	// guests may use.
	if s.IsGuest {
		return "", "", httputil.GuestForbidden("Guests cannot use account data")
	}
	vars := httputil.Vars(r)
	roomID, isRoom := vars["roomId"]
	if isRoom && !validRoomID(roomID) {
		return "", "", httputil.InvalidParam("%q is not a valid room ID", roomID)
	}
	dataType = vars["type"]
	if len(dataType) > maxEventTypeLength {
		return "", "", httputil.InvalidParam("Account data type is longer than %d bytes", maxEventTypeLength)
	}
	if !validStoredString(dataType) {
		return "", "", httputil.InvalidParam("Account data type is not valid UTF-8 text")
	}
	return roomID, dataType, nil
}

func (a *API) getAccountData(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, dataType, err := a.accountDataKey(r, s)
	if err != nil {
		return err
	}
	content, err := a.accounts.AccountData(r.Context(), s.Localpart, roomID, dataType)
	if errors.Is(err, accounts.ErrNotFound) {
		return httputil.NotFound("Account data not found")
	}
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, content)
	return nil
}

func (a *API) putAccountData(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, dataType, err := a.accountDataKey(r, s)
	if err != nil {
		return err
	}
	for _, t := range serverManagedAccountData {
		if dataType == t {
			// The spec's status and errcode for this case.
			return &httputil.Error{Status: http.StatusMethodNotAllowed, Code: "M_BAD_JSON",
				Message: "Cannot set " + t + " through this API"}
		}
	}
	body, err := httputil.ReadBody(r)
	if err != nil {
		return err
	}
	if len(body) > maxAccountDataSize {
		return httputil.TooLarge("Account data is larger than %d bytes", maxAccountDataSize)
	}
	content, err := compactObject(body)
	if err != nil {
		return err
	}
	if _, err := a.accounts.PutAccountData(r.Context(), s.Localpart, roomID, dataType, content); err != nil {
		return err
	}
	if a.waker != nil {
		a.waker.WakeUser(a.userID(s.Localpart))
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// compactObject checks that body is a JSON object in UTF-8 (PostgreSQL
// text refuses anything else) and returns it without insignificant space.
func compactObject(body []byte) (json.RawMessage, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' || !utf8.Valid(trimmed) || !json.Valid(trimmed) {
		return nil, httputil.NotJSON("Content must be a JSON object")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, trimmed); err != nil {
		return nil, httputil.NotJSON("Content must be a JSON object")
	}
	return buf.Bytes(), nil
}

// validStoredString reports whether s can be stored as text: UTF-8 with
// no NUL (which PostgreSQL refuses).
func validStoredString(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// validRoomID accepts both forms of room ID: !opaque:server (room
// versions 1 to 11) and, from room version 12, !hash where the hash is
// unpadded URL-safe base64.
func validRoomID(id string) bool {
	if len(id) > maxRoomIDLength || !strings.HasPrefix(id, "!") || !validStoredString(id) {
		return false
	}
	opaque, server, hasServer := strings.Cut(id[1:], ":")
	if hasServer {
		return opaque != "" && config.ValidateServerName(server) == nil
	}
	if opaque == "" {
		return false
	}
	for i := 0; i < len(opaque); i++ {
		c := opaque[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
