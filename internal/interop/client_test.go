package interop

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

// A small Matrix client spoken to either server over its plain HTTP
// client listener, the same for both so the flows read symmetrically.

// homeserver is one server as seen by the test: where its client API is,
// its name, and a function that returns its recent logs for failures.
type homeserver struct {
	label      string // "plexus" or "dendrite", for messages
	clientURL  string
	serverName string
	logs       func() string
	http       *http.Client
}

// user is a registered, logged-in user of one homeserver, with its own
// /sync position.
type user struct {
	hs       *homeserver
	userID   string
	deviceID string
	token    string
	since    string
	lastSync string // the body of the last /sync answer, for failures
	txn      atomic.Int64
}

type response struct {
	status int
	body   []byte
}

func (r *response) get(path string) gjson.Result { return gjson.GetBytes(r.body, path) }
func (r *response) String() string               { return fmt.Sprintf("%d %s", r.status, r.body) }

// do sends one client request; body is encoded as JSON unless nil.
func (hs *homeserver) do(t *testing.T, method, path, token string, body any) *response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatalf("encode body: %v", err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, hs.clientURL+path, rd)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hs.http.Do(req)
	if err != nil {
		t.Fatalf("%s: %s %s: %v%s", hs.label, method, path, err, hs.logTail())
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %s %s: read body: %v", hs.label, method, path, err)
	}
	return &response{status: resp.StatusCode, body: data}
}

// mustOK sends a request and fails the test, with the server's logs,
// unless it answers 200.
func (hs *homeserver) mustOK(t *testing.T, method, path, token string, body any) *response {
	t.Helper()
	r := hs.do(t, method, path, token, body)
	if r.status != http.StatusOK {
		t.Fatalf("%s: %s %s: %s%s", hs.label, method, path, r, hs.logTail())
	}
	return r
}

func (hs *homeserver) logTail() string {
	if hs.logs == nil {
		return ""
	}
	return fmt.Sprintf("\n--- %s log (tail) ---\n%s", hs.label, hs.logs())
}

// register creates a user through open registration with the dummy flow:
// a first request without auth opens a session when the server wants one.
func (hs *homeserver) register(t *testing.T, localpart string) *user {
	t.Helper()
	body := map[string]any{
		"username": localpart, "password": "interop-password-" + localpart,
		"auth": map[string]any{"type": "m.login.dummy"},
	}
	r := hs.do(t, "POST", "/_matrix/client/v3/register", "", body)
	if r.status == http.StatusUnauthorized && r.get("session").Exists() {
		body["auth"] = map[string]any{"type": "m.login.dummy", "session": r.get("session").String()}
		r = hs.do(t, "POST", "/_matrix/client/v3/register", "", body)
	}
	if r.status != http.StatusOK {
		t.Fatalf("%s: register %s: %s%s", hs.label, localpart, r, hs.logTail())
	}
	return &user{hs: hs, userID: r.get("user_id").String(), deviceID: r.get("device_id").String(), token: r.get("access_token").String()}
}

func (u *user) mustOK(t *testing.T, method, path string, body any) *response {
	t.Helper()
	return u.hs.mustOK(t, method, path, u.token, body)
}

// join joins a room through the given server (a remote join when the
// room is unknown to the user's server).
func (u *user) join(t *testing.T, roomID, via string) *response {
	t.Helper()
	return u.hs.do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(via), u.token, map[string]any{})
}

// send sends an m.room.message with the given text and returns its event ID.
func (u *user) send(t *testing.T, roomID, text string) string {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/interop%d", url.PathEscape(roomID), u.txn.Add(1))
	return u.mustOK(t, "PUT", path, map[string]any{"msgtype": "m.text", "body": text}).get("event_id").String()
}

// waitEvent syncs until an event of the room's timeline in the user's
// joined rooms matches, and returns it; it fails after timeout with the
// last sync body and the logs of the user's server and of others.
func (u *user) waitEvent(t *testing.T, roomID, what string, timeout time.Duration, match func(ev gjson.Result) bool, others ...*homeserver) gjson.Result {
	t.Helper()
	var found gjson.Result
	u.waitSync(t, what+" in room "+roomID, timeout, func(body gjson.Result) bool {
		for _, ev := range joinedRoom(body, roomID).Get("timeline.events").Array() {
			if match(ev) {
				found = ev
				return true
			}
		}
		return false
	}, others...)
	return found
}

// waitSync syncs from the user's position until match accepts a /sync
// body, and returns that body; it fails after timeout with the last body
// and the logs of the user's server and of others. Each wait only sees
// what arrives after the previous one.
func (u *user) waitSync(t *testing.T, what string, timeout time.Duration, match func(body gjson.Result) bool, others ...*homeserver) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			break
		}
		wait := min(remaining, 5*time.Second)
		path := fmt.Sprintf("/_matrix/client/v3/sync?timeout=%d", wait.Milliseconds())
		if u.since != "" {
			path += "&since=" + url.QueryEscape(u.since)
		}
		r := u.hs.do(t, "GET", path, u.token, nil)
		if r.status != http.StatusOK {
			t.Fatalf("%s: %s: /sync: %s%s", u.hs.label, u.userID, r, u.hs.logTail())
		}
		u.lastSync = string(r.body)
		u.since = r.get("next_batch").String()
		if body := gjson.ParseBytes(r.body); match(body) {
			return body
		}
	}
	var logs strings.Builder
	logs.WriteString(u.hs.logTail())
	for _, o := range others {
		logs.WriteString(o.logTail())
	}
	t.Fatalf("%s (%s) did not see %s within %s\nlast /sync: %s%s",
		u.userID, u.hs.label, what, timeout, truncate(u.lastSync, 8000), logs.String())
	return gjson.Result{}
}

// joinedRoom is a joined room's section of a /sync body.
func joinedRoom(body gjson.Result, roomID string) gjson.Result {
	return roomSection(body, "join", roomID)
}

// roomSection is the room's entry under rooms.<kind> (join, invite,
// leave) of a /sync body, found by comparing keys (a room ID's characters
// are special in gjson paths).
func roomSection(body gjson.Result, kind, roomID string) gjson.Result {
	var room gjson.Result
	body.Get("rooms." + kind).ForEach(func(key, value gjson.Result) bool {
		if key.String() == roomID {
			room = value
			return false
		}
		return true
	})
	return room
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("... (%d more bytes)", len(s)-n)
}

func isMembership(userID, membership string) func(gjson.Result) bool {
	return func(ev gjson.Result) bool {
		return ev.Get("type").String() == "m.room.member" && ev.Get("state_key").String() == userID &&
			ev.Get("content.membership").String() == membership
	}
}

func isMessage(sender, text string) func(gjson.Result) bool {
	return func(ev gjson.Result) bool {
		return ev.Get("type").String() == "m.room.message" && ev.Get("sender").String() == sender &&
			ev.Get("content.body").String() == text
	}
}

// invite invites another user into a room.
func (u *user) invite(t *testing.T, roomID, userID string) {
	t.Helper()
	u.mustOK(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", map[string]any{"user_id": userID})
}

// leave leaves a room.
func (u *user) leave(t *testing.T, roomID string) {
	t.Helper()
	u.mustOK(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", map[string]any{})
}

// typing sets the user's typing notification in a room.
func (u *user) typing(t *testing.T, roomID string, typing bool) {
	t.Helper()
	body := map[string]any{"typing": typing}
	if typing {
		body["timeout"] = 30000
	}
	u.mustOK(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(u.userID), body)
}

// receipt sends a public read receipt for an event.
func (u *user) receipt(t *testing.T, roomID, eventID string) {
	t.Helper()
	u.mustOK(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/receipt/m.read/"+url.PathEscape(eventID), map[string]any{})
}

// setAlias points a room alias of the user's server at a room.
func (u *user) setAlias(t *testing.T, alias, roomID string) {
	t.Helper()
	u.mustOK(t, "PUT", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), map[string]any{"room_id": roomID})
}

// messages pages back through a room's history from a token.
func (u *user) messages(t *testing.T, roomID, from string, limit int) *response {
	t.Helper()
	path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/messages?dir=b&limit=%d", url.PathEscape(roomID), limit)
	if from != "" {
		path += "&from=" + url.QueryEscape(from)
	}
	return u.mustOK(t, "GET", path, nil)
}

// hasEphemeral tells whether a joined room's ephemeral events in a /sync
// body hold one that matches.
func hasEphemeral(body gjson.Result, roomID string, match func(ev gjson.Result) bool) bool {
	for _, ev := range joinedRoom(body, roomID).Get("ephemeral.events").Array() {
		if match(ev) {
			return true
		}
	}
	return false
}

func isTyping(userID string) func(gjson.Result) bool {
	return func(ev gjson.Result) bool {
		if ev.Get("type").String() != "m.typing" {
			return false
		}
		for _, id := range ev.Get("content.user_ids").Array() {
			if id.String() == userID {
				return true
			}
		}
		return false
	}
}

func isReceipt(eventID, userID string) func(gjson.Result) bool {
	return func(ev gjson.Result) bool {
		if ev.Get("type").String() != "m.receipt" {
			return false
		}
		found := false
		ev.Get("content").ForEach(func(key, value gjson.Result) bool {
			if key.String() == eventID {
				value.Get("m\\.read").ForEach(func(uid, _ gjson.Result) bool {
					found = found || uid.String() == userID
					return !found
				})
			}
			return !found
		})
		return found
	}
}

// hasInvite tells whether a /sync body holds an invite of userID to the room.
func hasInvite(body gjson.Result, roomID, userID string) bool {
	for _, ev := range roomSection(body, "invite", roomID).Get("invite_state.events").Array() {
		if isMembership(userID, "invite")(ev) {
			return true
		}
	}
	return false
}
