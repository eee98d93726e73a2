package keyserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"sync"

	"github.com/sirupsen/logrus"
)

// Other servers' users. Their device lists are cached while a local user
// shares a room with them, because only then does their server send us
// m.device_list_update EDUs that keep the cache fresh:
//
//   - the first query about a room-mate asks their server for all their
//     keys (/user/keys/query, RemoteKeys.QueryKeys, one request for all
//     of its users asked about) and caches the answer with stream_id 0,
//     the spec's way to populate the cache. That answer has no stream_id,
//     so the first m.device_list_update after it names a prev_id we have
//     not seen and the federation API resyncs (/user/devices), which
//     gives one;
//   - later queries are answered from the cache, which the federation
//     API keeps up to date (ApplyRemoteDeviceListUpdate, resyncs);
//   - a user who shares no room with a local user any more is dropped
//     from the cache by the federation API as soon as the leave is seen
//     (federationapi/keys_leave.go), or else when next asked about, and
//     then, like any user we share no room with, asked about on their
//     server each time;
//   - one-time keys are never cached: they are claimed on the user's
//     server (/user/keys/claim).
//
// Servers are asked in parallel; one that cannot be reached (RemoteKeys
// applies the timeouts) is reported in failures.

const (
	sqlDeleteRemoteList         = `DELETE FROM keyserver_remote_device_lists WHERE user_id = $1`
	sqlDeleteRemoteCrossSigning = `DELETE FROM keyserver_cross_signing_keys WHERE user_id = $1`
)

// ForgetRemoteDeviceList implements API. Signatures local users made of
// the user's master key are kept: they are local users' data, and come
// back with the key.
func (k *KeyServer) ForgetRemoteDeviceList(ctx context.Context, userID string) error {
	if _, local := k.localpart(userID); local || serverOf(userID) == "" {
		return newErr(CodeInvalidParam, "not a remote user")
	}
	return k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		res, err := tx.ExecContext(ctx, sqlDeleteRemoteList, userID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err // not cached
		}
		for _, q := range []string{sqlDeleteUserDevices, sqlDeleteRemoteCrossSigning} {
			if _, err := tx.ExecContext(ctx, q, userID); err != nil {
				return err
			}
		}
		return c.record(ctx, tx, userID, "", false)
	})
}

func newQueryResponse() *QueryResponse {
	return &QueryResponse{
		DeviceKeys: map[string]map[string]json.RawMessage{}, MasterKeys: map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{}, UserSigningKeys: map[string]json.RawMessage{},
		Failures: map[string]any{},
	}
}

// queryRemote adds remote users' keys (server -> user -> device IDs) to
// resp, each server's in parallel.
func (k *KeyServer) queryRemote(ctx context.Context, requester string, remote map[string]map[string][]string, resp *QueryResponse) error {
	servers := sortedKeys(remote)
	parts := make([]*QueryResponse, len(servers))
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, server := range servers {
		wg.Go(func() { parts[i], errs[i] = k.queryServer(ctx, requester, server, remote[server]) })
	}
	wg.Wait()
	for i := range servers {
		if errs[i] != nil {
			return errs[i]
		}
		p := parts[i]
		for u, devs := range p.DeviceKeys {
			resp.DeviceKeys[u] = devs
		}
		for _, m := range []struct{ dst, src map[string]json.RawMessage }{
			{resp.MasterKeys, p.MasterKeys}, {resp.SelfSigningKeys, p.SelfSigningKeys},
		} {
			for u, key := range m.src {
				m.dst[u] = key
			}
		}
		for s, f := range p.Failures {
			resp.Failures[s] = f
		}
	}
	return nil
}

// queryServer answers for one server's users: from the cache where it
// may, the rest from the server, caching room-mates' answers. Errors are
// our own (the database); the server's are failures.
func (k *KeyServer) queryServer(ctx context.Context, requester, server string, users map[string][]string) (*QueryResponse, error) {
	out := newQueryResponse()
	ask := map[string][]string{}
	var toCache []string
	for _, userID := range sortedKeys(users) {
		cached, shares, err := k.cacheState(ctx, userID)
		if err != nil {
			return nil, err
		}
		switch {
		case cached:
			if err := k.queryUser(ctx, requester, userID, "", users[userID], out); err != nil {
				return nil, err
			}
		case shares:
			toCache = append(toCache, userID)
			ask[userID] = []string{} // all devices, to cache
		default:
			ask[userID] = users[userID]
		}
	}
	if len(ask) == 0 {
		return out, nil
	}
	if k.remote == nil {
		// Without WithRemoteKeys other servers cannot be asked.
		out.Failures[server] = map[string]any{}
		return out, nil
	}
	r, err := k.remote.QueryKeys(ctx, server, ask)
	if err != nil {
		logrus.WithError(err).WithField("server", server).Warn("cannot query remote keys")
		out.Failures[server] = map[string]any{}
		return out, nil
	}
	for _, userID := range toCache {
		ok, err := k.startCache(ctx, userID, r)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if err := k.queryUser(ctx, requester, userID, "", users[userID], out); err != nil {
			return nil, err
		}
		// Answered from the cache: only the devices asked for.
		delete(r.DeviceKeys, userID)
		delete(r.MasterKeys, userID)
		delete(r.SelfSigningKeys, userID)
	}
	mergeRemoteQuery(out, r, server)
	return out, nil
}

// cacheState reports whether a remote user's keys are served from the
// cache, and whether a local user shares a room with them; the list of a
// user who shares no room any more is dropped from the cache.
func (k *KeyServer) cacheState(ctx context.Context, userID string) (cached, shares bool, err error) {
	_, cached, err = k.RemoteDeviceListStreamID(ctx, userID)
	if err != nil || k.remote == nil {
		return cached, false, err
	}
	if shares, err = k.remote.SharesRoom(ctx, userID); err != nil {
		return false, false, err
	}
	if cached && !shares {
		// No updates reach us any more: the cache would go stale.
		if err := k.ForgetRemoteDeviceList(ctx, userID); err != nil {
			return false, false, err
		}
		cached = false
	}
	return cached, shares, nil
}

// startCache caches a room-mate's keys from their server's
// /user/keys/query answer; false when the answer has nothing usable.
func (k *KeyServer) startCache(ctx context.Context, userID string, r *QueryResponse) (bool, error) {
	devices, ok := r.DeviceKeys[userID]
	if !ok {
		return false, nil // the server does not know them
	}
	d := UserDevices{UserID: userID, MasterKey: r.MasterKeys[userID], SelfSigningKey: r.SelfSigningKeys[userID]}
	for _, id := range sortedKeys(devices) {
		var name struct {
			Unsigned struct {
				Name string `json:"device_display_name"`
			} `json:"unsigned"`
		}
		_ = json.Unmarshal(devices[id], &name)
		d.Devices = append(d.Devices, UserDevice{DeviceID: id, DisplayName: name.Unsigned.Name, Keys: devices[id]})
	}
	if err := k.replaceRemoteDeviceList(ctx, d, false); err != nil {
		var ke *Error
		if errors.As(err, &ke) {
			logrus.WithError(err).WithField("user_id", userID).Warn("unusable remote keys; not cached")
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// claimRemote claims remote users' one-time keys (server -> user ->
// device -> algorithm) on their servers, in parallel.
func (k *KeyServer) claimRemote(ctx context.Context, remote map[string]map[string]map[string]string, resp *ClaimResponse) {
	servers := sortedKeys(remote)
	got := make([]map[string]map[string]map[string]json.RawMessage, len(servers))
	errs := make([]error, len(servers))
	if k.remote != nil {
		var wg sync.WaitGroup
		for i, server := range servers {
			wg.Go(func() { got[i], errs[i] = k.remote.ClaimKeys(ctx, server, remote[server]) })
		}
		wg.Wait()
	}
	for i, server := range servers {
		if k.remote == nil || errs[i] != nil {
			if errs[i] != nil {
				logrus.WithError(errs[i]).WithField("server", server).Warn("cannot claim remote keys")
			}
			resp.Failures[server] = map[string]any{}
			continue
		}
		for u, devs := range got[i] {
			if serverOf(u) == server {
				resp.OneTimeKeys[u] = devs
			}
		}
	}
}
