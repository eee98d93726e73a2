package federationapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// Queries asks other servers on behalf of our clients: profiles and
// public room directories (aliases go through Membership, which joins by
// them too).
type Queries struct {
	fed       *FederationAPI
	hierarchy hierarchyCache // queries_hierarchy.go
}

// NewQueries makes the client-facing queries.
func NewQueries(fed *FederationAPI) *Queries { return &Queries{fed: fed} }

const (
	queryTimeout  = 30 * time.Second
	maxQueryBytes = 1 << 20
)

// get sends a signed request to server and decodes a JSON object answer.
// Errors are Matrix errors for the client: 404 passes through, anything
// else is 502 (the other server failed).
func (q *Queries) call(ctx context.Context, method string, server spec.ServerName, path string, body any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	resp, err := q.fed.DoSigned(ctx, method, server, path, body)
	if err != nil {
		return nil, &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: fmt.Sprintf("%s cannot be reached", server)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxQueryBytes+1))
	if err != nil || len(data) > maxQueryBytes {
		return nil, &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: fmt.Sprintf("%s sent an unreadable answer", server)}
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, httputil.NotFound("%s", orDefault(gjson.GetBytes(data, "error").String(), "Not found on "+string(server)))
	}
	if resp.StatusCode != http.StatusOK || !gjson.ValidBytes(data) || !gjson.ParseBytes(data).IsObject() {
		return nil, &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: fmt.Sprintf("%s answered %d", server, resp.StatusCode)}
	}
	return data, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// RemoteProfile asks a user's server for their profile.
func (q *Queries) RemoteProfile(ctx context.Context, userID string) (displayName, avatarURL string, err error) {
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return "", "", httputil.InvalidParam("Invalid user ID")
	}
	data, err := q.call(ctx, http.MethodGet, u.Domain(), "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape(userID), nil)
	if err != nil {
		return "", "", err
	}
	p := gjson.ParseBytes(data)
	return p.Get("displayname").String(), p.Get("avatar_url").String(), nil
}

// RemotePublicRooms asks a server for its public room directory with the
// client's request (limit, since, filter, include_all_networks,
// third_party_instance_id), and returns its answer as it came.
func (q *Queries) RemotePublicRooms(ctx context.Context, server string, request any) (json.RawMessage, error) {
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(server)); !ok {
		return nil, httputil.InvalidParam("Invalid server name")
	}
	data, err := q.call(ctx, http.MethodPost, spec.ServerName(server), "/_matrix/federation/v1/publicRooms", request)
	if err != nil {
		return nil, err
	}
	if !gjson.GetBytes(data, "chunk").IsArray() {
		return nil, &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: server + " sent a directory without a chunk"}
	}
	return data, nil
}
