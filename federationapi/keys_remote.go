package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/keyserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// End-to-end encryption keys over federation (keys*.go):
//
//   - keys_remote.go: RemoteKeys, the key server's way to other servers
//     (/user/keys/query, /user/keys/claim; /user/devices for resyncs)
//     and to whether a local user shares a room with a remote one;
//   - keys_outbound.go: DeviceListSender, our users' device list changes
//     as m.device_list_update and m.signing_key_update EDUs;
//   - keys_inbound.go: KeyUpdates, other servers' EDUs into the key
//     server's cache, in order, with a resync after a gap;
//   - reads_query.go: /user/devices, /user/keys/query and /user/keys/claim
//     answered from the key server.

// Timeouts of key requests to other servers. A client's /keys/query and
// /keys/claim wait for them (the client-server API's default timeout is
// ten seconds); a resync runs within an inbound transaction.
const (
	keysRequestTimeout = 10 * time.Second
	keysResyncTimeout  = 30 * time.Second
	// maxKeysResponse bounds an answer: a user's devices, or the keys of
	// every user a client asks about on one server.
	maxKeysResponse = 16 << 20
	// residentCacheTTL is how long "a local user is in this room" is
	// reused by SharesRoom, so that one /keys/query about many members of
	// a large room does not list its members each time.
	residentCacheTTL = 10 * time.Second
	maxResidentCache = 10000
)

// KeyRooms is what RemoteKeys needs from the roomserver: who shares a
// room with whom.
type KeyRooms interface {
	// Memberships lists a user's current memberships.
	Memberships(ctx context.Context, userID string) ([]rsapi.Membership, error)
	// ResidentServers are the servers with joined members in a room.
	ResidentServers(ctx context.Context, roomID string) ([]string, error)
}

// RemoteKeys implements keyserver.RemoteKeys over federation. It is built
// before the key server, which takes it with keyserver.WithRemoteKeys;
// KeyUpdates resyncs through it too.
type RemoteKeys struct {
	fed   *FederationAPI
	rooms KeyRooms
	now   func() time.Time

	mu       sync.Mutex
	resident map[string]residentEntry // room ID -> whether we are in it
	// forgotten counts forgetResident calls: an answer read before one is
	// not kept, or a room we just left could be cached as ours again.
	forgotten uint64
}

type residentEntry struct {
	in      bool
	expires time.Time
}

var _ keyserver.RemoteKeys = (*RemoteKeys)(nil)

// NewRemoteKeys builds the key server's access to other servers.
func NewRemoteKeys(fed *FederationAPI, rooms KeyRooms) *RemoteKeys {
	r := &RemoteKeys{fed: fed, rooms: rooms, now: time.Now, resident: map[string]residentEntry{}}
	fed.remoteKeys = r // the sender tells it of rooms we leave (keys_leave.go)
	return r
}

// forgetResident drops the cached answer of weAreIn for a room we left,
// so that a list is not cached again on its strength.
func (r *RemoteKeys) forgetResident(roomID string) {
	r.mu.Lock()
	delete(r.resident, roomID)
	r.forgotten++
	r.mu.Unlock()
}

// keysRemoteError is another server's answer that is not a 200.
type keysRemoteError struct {
	Server spec.ServerName
	Status int
}

func (e *keysRemoteError) Error() string {
	return fmt.Sprintf("%s answered %d", e.Server, e.Status)
}

// call sends a signed request and decodes the JSON object answer into out.
func (r *RemoteKeys) call(ctx context.Context, timeout time.Duration, method string, server spec.ServerName, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := r.fed.DoSigned(ctx, method, server, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return &keysRemoteError{Server: server, Status: resp.StatusCode}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxKeysResponse+1))
	if err != nil {
		return err
	}
	if len(data) > maxKeysResponse {
		return fmt.Errorf("%s: answer larger than %d bytes", server, maxKeysResponse)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	return nil
}

// QueryKeys asks server (POST /user/keys/query) for its users' device
// and cross-signing keys.
func (r *RemoteKeys) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (*keyserver.QueryResponse, error) {
	query := make(map[string][]string, len(deviceKeys))
	for u, devs := range deviceKeys {
		if devs == nil {
			devs = []string{} // all devices
		}
		query[u] = devs
	}
	var out keyserver.QueryResponse
	if err := r.call(ctx, keysRequestTimeout, http.MethodPost, spec.ServerName(server), "/_matrix/federation/v1/user/keys/query",
		map[string]any{"device_keys": query}, &out); err != nil {
		return nil, err
	}
	// The key server merges only the server's own users; user-signing
	// keys and failures are not for other servers to say.
	out.UserSigningKeys, out.Failures = nil, nil
	return &out, nil
}

// ClaimKeys claims one-time keys of server's users (POST /user/keys/claim).
func (r *RemoteKeys) ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (map[string]map[string]map[string]json.RawMessage, error) {
	var out struct {
		OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	}
	if err := r.call(ctx, keysRequestTimeout, http.MethodPost, spec.ServerName(server), "/_matrix/federation/v1/user/keys/claim",
		map[string]any{"one_time_keys": oneTimeKeys}, &out); err != nil {
		return nil, err
	}
	return out.OneTimeKeys, nil
}

// deviceList fetches a user's device list from their server
// (GET /user/devices/{userId}) for a resync (keys_inbound.go); nil when
// the server does not know them.
func (r *RemoteKeys) deviceList(ctx context.Context, timeout time.Duration, userID string) (*keyserver.UserDevices, error) {
	server := userServerName(userID)
	if server == "" {
		return nil, fmt.Errorf("%q is not a user ID", userID)
	}
	var body struct {
		UserID   string `json:"user_id"`
		StreamID int64  `json:"stream_id"`
		Devices  []struct {
			DeviceID    string          `json:"device_id"`
			DisplayName string          `json:"device_display_name"`
			Keys        json.RawMessage `json:"keys"`
		} `json:"devices"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	err := r.call(ctx, timeout, http.MethodGet, server, "/_matrix/federation/v1/user/devices/"+url.PathEscape(userID), nil, &body)
	if re := (*keysRemoteError)(nil); errors.As(err, &re) && re.Status == http.StatusNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if body.UserID != userID {
		return nil, fmt.Errorf("%s answered for %q when asked for %s's devices", server, body.UserID, userID)
	}
	d := &keyserver.UserDevices{UserID: userID, StreamID: body.StreamID, MasterKey: body.MasterKey, SelfSigningKey: body.SelfSigningKey}
	for _, dev := range body.Devices {
		if dev.DeviceID == "" || len(dev.Keys) == 0 {
			continue // a device without keys has nothing to cache
		}
		d.Devices = append(d.Devices, keyserver.UserDevice{DeviceID: dev.DeviceID, DisplayName: dev.DisplayName, Keys: dev.Keys})
	}
	return d, nil
}

// SharesRoom reports whether a local user is joined to a room the
// remote user is joined to.
func (r *RemoteKeys) SharesRoom(ctx context.Context, userID string) (bool, error) {
	memberships, err := r.rooms.Memberships(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, m := range memberships {
		if m.Membership != spec.Join {
			continue
		}
		in, err := r.weAreIn(ctx, m.RoomID)
		if err != nil {
			return false, err
		}
		if in {
			return true, nil
		}
	}
	return false, nil
}

// weAreIn reports whether a local user is joined to the room, reusing
// the answer for a few seconds.
func (r *RemoteKeys) weAreIn(ctx context.Context, roomID string) (bool, error) {
	now := r.now()
	r.mu.Lock()
	e, ok := r.resident[roomID]
	gen := r.forgotten
	r.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.in, nil
	}
	servers, err := r.rooms.ResidentServers(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	in := false
	for _, s := range servers {
		if spec.ServerName(s) == r.fed.ServerName() {
			in = true
			break
		}
	}
	r.mu.Lock()
	if len(r.resident) >= maxResidentCache {
		clear(r.resident)
	}
	if r.forgotten == gen { // else a leave raced with this read
		r.resident[roomID] = residentEntry{in: in, expires: now.Add(residentCacheTTL)}
	}
	r.mu.Unlock()
	return in, nil
}
