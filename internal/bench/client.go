// Package bench drives a Matrix homeserver's client-server API over HTTP
// for load tests and benchmarks. It speaks only the public API (and the
// shared-secret registration endpoint that Synapse, Dendrite and Plexus
// share), so cmd/plexus-load measures Plexus and other homeservers the
// same way; the HTTP benchmarks in this package use it against an
// in-process Plexus.
package bench

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Client talks to one homeserver.
type Client struct {
	// BaseURL is the homeserver's client API, without a trailing slash.
	BaseURL string
	// SharedSecret, when set, makes Register use shared-secret registration
	// (/_synapse/admin/v1/register) instead of open registration.
	SharedSecret string
	HTTP         *http.Client
	txn          atomic.Int64
	// txnPrefix keeps transaction IDs unique across runs of the tool.
	txnPrefix string
}

// NewClient returns a client for the homeserver at baseURL whose HTTP
// connections are kept alive and reused (net/http keeps only two idle
// connections per host by default, which would make concurrent senders
// reconnect all the time).
func NewClient(baseURL string) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 1024
	tr.MaxIdleConnsPerHost = 1024
	tr.MaxConnsPerHost = 0 // unlimited: the sync mode holds 1,000 long-polls at once
	return &Client{
		BaseURL:   strings.TrimRight(baseURL, "/"),
		HTTP:      &http.Client{Transport: tr, Timeout: 5 * time.Minute},
		txnPrefix: fmt.Sprintf("b%x", time.Now().UnixNano()),
	}
}

// User is a logged-in user.
type User struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token"`
	DeviceID    string `json:"device_id"`
}

// Error is a response other than 200.
type Error struct {
	Method, Path string
	Status       int
	Body         string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Status, e.Body)
}

// Do sends a request with an optional JSON body and access token and
// decodes a 200 answer into out (when not nil). Any other status is an
// *Error.
func (c *Client) Do(ctx context.Context, method, path, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &Error{Method: method, Path: path, Status: resp.StatusCode, Body: string(data)}
	}
	if out != nil {
		if raw, ok := out.(*[]byte); ok {
			*raw = data
			return nil
		}
		return json.Unmarshal(data, out)
	}
	return nil
}

// Register creates a user and returns it logged in: by shared-secret
// registration when SharedSecret is set, else by open registration with
// the m.login.dummy flow (asking for a session first when the server
// wants one, as Dendrite does).
func (c *Client) Register(ctx context.Context, localpart, password string) (*User, error) {
	if c.SharedSecret != "" {
		return c.registerSharedSecret(ctx, localpart, password)
	}
	const path = "/_matrix/client/v3/register"
	body := map[string]any{"username": localpart, "password": password, "auth": map[string]string{"type": "m.login.dummy"}}
	var u User
	err := c.Do(ctx, "POST", path, "", body, &u)
	var herr *Error
	if err != nil && errors.As(err, &herr) && herr.Status == http.StatusUnauthorized {
		// User-interactive auth: take the session and complete the dummy stage.
		var flows struct {
			Session string `json:"session"`
		}
		if jerr := json.Unmarshal([]byte(herr.Body), &flows); jerr != nil || flows.Session == "" {
			return nil, err
		}
		body["auth"] = map[string]string{"type": "m.login.dummy", "session": flows.Session}
		err = c.Do(ctx, "POST", path, "", body, &u)
	}
	if err != nil {
		return nil, err
	}
	return &u, nil
}

func (c *Client) registerSharedSecret(ctx context.Context, localpart, password string) (*User, error) {
	const path = "/_synapse/admin/v1/register"
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := c.Do(ctx, "GET", path, "", nil, &nonce); err != nil {
		return nil, err
	}
	m := hmac.New(sha1.New, []byte(c.SharedSecret))
	m.Write([]byte(nonce.Nonce + "\x00" + localpart + "\x00" + password + "\x00notadmin"))
	var u User
	err := c.Do(ctx, "POST", path, "", map[string]any{
		"nonce": nonce.Nonce, "username": localpart, "password": password, "admin": false,
		"mac": hex.EncodeToString(m.Sum(nil)),
	}, &u)
	if err != nil {
		return nil, err
	}
	return &u, nil
}

// CreateRoom creates a room with the given /createRoom body.
func (c *Client) CreateRoom(ctx context.Context, u *User, body map[string]any) (string, error) {
	var resp struct {
		RoomID string `json:"room_id"`
	}
	if err := c.Do(ctx, "POST", "/_matrix/client/v3/createRoom", u.AccessToken, body, &resp); err != nil {
		return "", err
	}
	return resp.RoomID, nil
}

// PublicRoom is the /createRoom body of a public room.
func PublicRoom(name string) map[string]any {
	return map[string]any{"preset": "public_chat", "name": name}
}

// Join joins a room by ID.
func (c *Client) Join(ctx context.Context, u *User, roomID string) error {
	return c.Do(ctx, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), u.AccessToken, map[string]any{}, nil)
}

// Leave leaves a room.
func (c *Client) Leave(ctx context.Context, u *User, roomID string) error {
	return c.Do(ctx, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", u.AccessToken, map[string]any{}, nil)
}

// Message is the content of the messages Send sends.
var Message = map[string]any{"msgtype": "m.text", "body": "The quick brown fox jumps over the lazy dog"}

// Send sends an m.room.message with a fresh transaction ID and returns
// the event ID.
func (c *Client) Send(ctx context.Context, u *User, roomID string) (string, error) {
	txn := c.nextTxn()
	var resp struct {
		EventID string `json:"event_id"`
	}
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + txn
	if err := c.Do(ctx, "PUT", path, u.AccessToken, Message, &resp); err != nil {
		return "", err
	}
	return resp.EventID, nil
}

// nextTxn returns a transaction ID unique to this client and run.
func (c *Client) nextTxn() string { return fmt.Sprintf("%s-%d", c.txnPrefix, c.txn.Add(1)) }

// Sync calls /sync once (timeout 0) and returns next_batch and the body.
// since "" is an initial sync.
func (c *Client) Sync(ctx context.Context, u *User, since string) (string, []byte, error) {
	q := url.Values{"timeout": {"0"}}
	if since != "" {
		q.Set("since", since)
	}
	var raw []byte
	if err := c.Do(ctx, "GET", "/_matrix/client/v3/sync?"+q.Encode(), u.AccessToken, nil, &raw); err != nil {
		return "", nil, err
	}
	var resp struct {
		NextBatch string `json:"next_batch"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return "", nil, err
	}
	return resp.NextBatch, raw, nil
}

// Get reads a path as a user and returns the body.
func (c *Client) Get(ctx context.Context, u *User, path string) ([]byte, error) {
	var raw []byte
	err := c.Do(ctx, "GET", path, u.AccessToken, nil, &raw)
	return raw, err
}

// JoinedCount returns how many users are joined to a room, as a member
// sees it (GET /joined_members).
func (c *Client) JoinedCount(ctx context.Context, u *User, roomID string) (int, error) {
	var resp struct {
		Joined map[string]json.RawMessage `json:"joined"`
	}
	err := c.Do(ctx, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", u.AccessToken, nil, &resp)
	return len(resp.Joined), err
}

// WaitJoined waits until a room has at least n joined members.
func (c *Client) WaitJoined(ctx context.Context, u *User, roomID string, n int, max time.Duration) error {
	deadline := time.Now().Add(max)
	for {
		got, err := c.JoinedCount(ctx, u, roomID)
		if err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("room %s has %d joined members after %v, want %d", roomID, got, max, n)
		}
		time.Sleep(time.Second)
	}
}
