package bench

import (
	"context"
	"encoding/json"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"time"
)

// SyncParams are the query of one /sync call.
type SyncParams struct {
	Since   string
	Timeout time.Duration
	// Filter is an inline JSON filter or a filter ID ("" for none).
	Filter string
	// Sent, when not nil, is called once the request is written to the
	// server: a long-poll is then on its way to being held.
	Sent func()
}

// SyncRaw calls /sync with p and returns the body.
func (c *Client) SyncRaw(ctx context.Context, u *User, p SyncParams) ([]byte, error) {
	q := url.Values{"timeout": {strconv.FormatInt(p.Timeout.Milliseconds(), 10)}}
	if p.Since != "" {
		q.Set("since", p.Since)
	}
	if p.Filter != "" {
		q.Set("filter", p.Filter)
	}
	if p.Sent != nil {
		sent := p.Sent
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { sent() },
		})
	}
	var raw []byte
	err := c.Do(ctx, "GET", "/_matrix/client/v3/sync?"+q.Encode(), u.AccessToken, nil, &raw)
	return raw, err
}

// SendText sends an m.room.message with the given body and returns the
// event ID.
func (c *Client) SendText(ctx context.Context, u *User, roomID, body string) (string, error) {
	txn := c.nextTxn()
	var resp struct {
		EventID string `json:"event_id"`
	}
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + txn
	err := c.Do(ctx, "PUT", path, u.AccessToken, map[string]any{"msgtype": "m.text", "body": body}, &resp)
	return resp.EventID, err
}

// MessagesPage is one answer of /rooms/{roomId}/messages.
type MessagesPage struct {
	Start string            `json:"start"`
	End   string            `json:"end"`
	Chunk []json.RawMessage `json:"chunk"`
}

// Messages reads one page of a room's history backwards from from ("" for
// the newest end).
func (c *Client) Messages(ctx context.Context, u *User, roomID, from string, limit int) (MessagesPage, error) {
	q := url.Values{"dir": {"b"}, "limit": {strconv.Itoa(limit)}}
	if from != "" {
		q.Set("from", from)
	}
	var page MessagesPage
	err := c.Do(ctx, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), u.AccessToken, nil, &page)
	return page, err
}
