package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	"github.com/plexus-chat/plexus/keyserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Queries other servers make about our users and rooms: /query/profile,
// /query/directory, /publicRooms, /user/devices and the E2EE key
// endpoints (from the key server, see keys_remote.go).

// localUser parses a user ID and returns its localpart when it is one of
// ours: 400 when it is not a user ID, 404 when it is someone else's.
func (h *readsAPI) localUser(userID string) (string, error) {
	uid, err := mxid.ParseUserID(userID)
	if err != nil {
		return "", httputil.InvalidParam("Invalid user ID: %v", err)
	}
	// Local localparts are stored lower-case and user IDs are
	// case-sensitive: @Alice is not @alice.
	if uid.Server != string(h.f.ServerName()) || uid.Localpart != strings.ToLower(uid.Localpart) {
		return "", httputil.NotFound("User %s is not a user of this server", userID)
	}
	return uid.Localpart, nil
}

// queryProfile serves GET /query/profile?user_id=&field=.
func (h *readsAPI) queryProfile(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, _ spec.ServerName) error {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" {
		return httputil.MissingParam("user_id is required")
	}
	localpart, err := h.localUser(userID)
	if err != nil {
		return err
	}
	field := q.Get("field")
	switch field {
	case "", "displayname", "avatar_url", "m.tz":
	default:
		// Only these fields exist here (the accounts component stores no
		// custom fields).
		return httputil.NotFound("Profile field %s not found", field)
	}
	p, err := h.accounts.Profile(r.Context(), localpart)
	if errors.Is(err, accounts.ErrNotFound) {
		return httputil.NotFound("Profile not found")
	}
	if err != nil {
		return err
	}
	// Unset fields are left out, as the spec allows.
	resp := map[string]string{}
	if p.DisplayName != "" && (field == "" || field == "displayname") {
		resp["displayname"] = p.DisplayName
	}
	if p.AvatarURL != "" && (field == "" || field == "avatar_url") {
		resp["avatar_url"] = p.AvatarURL
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// readsAliasServer checks an alias's grammar (#localpart:server, at most
// 255 bytes) and returns its server.
func readsAliasServer(alias string) (string, bool) {
	if len(alias) > 255 || !strings.HasPrefix(alias, "#") {
		return "", false
	}
	local, server, ok := strings.Cut(alias[1:], ":")
	if !ok || local == "" || config.ValidateServerName(server) != nil {
		return "", false
	}
	return server, true
}

// queryDirectory serves GET /query/directory?room_alias=: the room of one
// of our aliases and the servers in it.
func (h *readsAPI) queryDirectory(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, _ spec.ServerName) error {
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		return httputil.MissingParam("room_alias is required")
	}
	server, ok := readsAliasServer(alias)
	if !ok {
		return httputil.InvalidParam("Invalid room alias")
	}
	ctx := r.Context()
	roomID := ""
	if server == string(h.f.ServerName()) {
		var err error
		if roomID, err = h.rooms.ResolveAlias(ctx, alias); err != nil {
			return err
		}
	}
	if roomID == "" {
		return httputil.NotFound("Room alias %s not found", alias)
	}
	residents, err := h.rooms.ResidentServers(ctx, roomID)
	if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
		return err
	}
	// Our server first when it is in the room (or when nobody is, as the
	// server that knows the alias); then the other residents.
	own := string(h.f.ServerName())
	var servers []string
	if len(residents) == 0 || slices.Contains(residents, own) {
		servers = append(servers, own)
	}
	for _, s := range residents {
		if s != own {
			servers = append(servers, s)
		}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "servers": servers})
	return nil
}

func (h *readsAPI) publicRoomsGET(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, _ spec.ServerName) error {
	q := r.URL.Query()
	req := rsapi.PublicRoomsRequest{Since: q.Get("since"), ThirdPartyInstanceID: q.Get("third_party_instance_id")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return httputil.InvalidParam("limit must be an integer")
		}
		req.Limit = n
	}
	switch q.Get("include_all_networks") {
	case "", "false":
	case "true":
		req.IncludeAllNetworks = true
	default:
		return httputil.InvalidParam("include_all_networks must be true or false")
	}
	return h.publicRooms(w, r, &req)
}

func (h *readsAPI) publicRoomsPOST(w http.ResponseWriter, r *http.Request, fr *fclient.FederationRequest, _ spec.ServerName) error {
	var req rsapi.PublicRoomsRequest
	if err := httputil.DecodeJSONObject(fr.Content(), &req); err != nil {
		return err
	}
	return h.publicRooms(w, r, &req)
}

// publicRooms answers /publicRooms with a page of our published rooms
// (rsapi.PagePublicRooms).
func (h *readsAPI) publicRooms(w http.ResponseWriter, r *http.Request, req *rsapi.PublicRoomsRequest) error {
	if req.IncludeAllNetworks && req.ThirdPartyInstanceID != "" {
		return httputil.InvalidParam("third_party_instance_id cannot be used with include_all_networks")
	}
	// No application services, hence no third-party networks.
	var rooms []rsapi.PublicRoom
	if req.ThirdPartyInstanceID == "" {
		var err error
		if rooms, err = h.rooms.PublicRooms(r.Context(), req.RoomsFilter()); err != nil {
			return err
		}
	}
	page, err := rsapi.PagePublicRooms(rooms, req.Since, req.Limit)
	if err != nil {
		return httputil.InvalidParam("%v", err)
	}
	httputil.WriteJSON(w, http.StatusOK, page)
	return nil
}

// ReadKeys is what /user/devices and /user/keys/* need from the key
// server. Without it (nil to RegisterReads) our users have no keys for
// other servers to see.
type ReadKeys interface {
	UserDevices(ctx context.Context, userID string) (*keyserver.UserDevices, error)
	QueryKeys(ctx context.Context, requester string, deviceKeys map[string][]string) (*keyserver.QueryResponse, error)
	ClaimKeys(ctx context.Context, requester string, oneTimeKeys map[string]map[string]string) (*keyserver.ClaimResponse, error)
}

// keys is the key server, nil when RegisterReads was given none.
func (h *readsAPI) keys() ReadKeys { return h.keyServer }

// readsDevice is one device of /user/devices.
type readsDevice struct {
	DeviceID string `json:"device_id"`
	// Keys are the device's identity keys.
	Keys json.RawMessage `json:"keys"`
}

// userDevices serves GET /user/devices/{userId}: the devices with keys,
// the stream_id that the user's next m.device_list_update names as its
// prev_id (keys_outbound.go), and the master and self-signing keys.
// Device names stay on this server.
func (h *readsAPI) userDevices(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, _ spec.ServerName) error {
	userID := httputil.Vars(r)["userId"]
	localpart, err := h.localUser(userID)
	if err != nil {
		return err
	}
	ctx := r.Context()
	acc, err := h.accounts.Account(ctx, localpart)
	if errors.Is(err, accounts.ErrNotFound) || (err == nil && acc.Deactivated) {
		return httputil.NotFound("User %s not found", userID)
	}
	if err != nil {
		return err
	}
	keys := h.keys()
	if keys == nil {
		httputil.WriteJSON(w, http.StatusOK, map[string]any{"user_id": userID, "stream_id": 0, "devices": []readsDevice{}})
		return nil
	}
	d, err := keys.UserDevices(ctx, userID)
	if err != nil {
		return err
	}
	out := make([]readsDevice, 0, len(d.Devices))
	for _, dev := range d.Devices {
		out = append(out, readsDevice{DeviceID: dev.DeviceID, Keys: dev.Keys})
	}
	resp := map[string]any{"user_id": userID, "stream_id": d.StreamID, "devices": out}
	if d.MasterKey != nil {
		resp["master_key"] = d.MasterKey
	}
	if d.SelfSigningKey != nil {
		resp["self_signing_key"] = d.SelfSigningKey
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// userKeysQuery serves POST /user/keys/query: our users' device keys
// (without their names) and master and self-signing keys, with the
// signatures every server may see.
func (h *readsAPI) userKeysQuery(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, _ spec.ServerName) error {
	var body struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := httputil.DecodeJSONObject(req.Content(), &body); err != nil {
		return err
	}
	if body.DeviceKeys == nil {
		return httputil.BadJSON("device_keys is required")
	}
	keys := h.keys()
	if keys == nil {
		httputil.WriteJSON(w, http.StatusOK, map[string]any{"device_keys": map[string]any{}})
		return nil
	}
	// Requester "": only our users, no user-signing keys or their signatures.
	q, err := keys.QueryKeys(r.Context(), "", body.DeviceKeys)
	if err != nil {
		return err
	}
	for _, devices := range q.DeviceKeys {
		for id, dk := range devices {
			devices[id] = withoutUnsigned(dk)
		}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"device_keys": q.DeviceKeys, "master_keys": q.MasterKeys, "self_signing_keys": q.SelfSigningKeys,
	})
	return nil
}

// withoutUnsigned drops a device's "unsigned" (its name, here).
func withoutUnsigned(raw json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return raw
	}
	if _, ok := m["unsigned"]; !ok {
		return raw
	}
	delete(m, "unsigned")
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}

// userKeysClaim serves POST /user/keys/claim: one one-time key (or the
// fallback key) per asked device of our users.
func (h *readsAPI) userKeysClaim(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, _ spec.ServerName) error {
	var body struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := httputil.DecodeJSONObject(req.Content(), &body); err != nil {
		return err
	}
	if body.OneTimeKeys == nil {
		return httputil.BadJSON("one_time_keys is required")
	}
	keys := h.keys()
	if keys == nil {
		httputil.WriteJSON(w, http.StatusOK, map[string]any{"one_time_keys": map[string]any{}})
		return nil
	}
	c, err := keys.ClaimKeys(r.Context(), "", body.OneTimeKeys)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"one_time_keys": c.OneTimeKeys})
	return nil
}
