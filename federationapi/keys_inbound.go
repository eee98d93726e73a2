package federationapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/keyserver"
)

// Other servers' m.device_list_update and m.signing_key_update EDUs, into
// the key server's cache of their users' device lists (the transaction
// handler has checked that the user is the origin's).
//
// A user's updates are applied one at a time and in order: an update
// whose stream_id we have (or passed) is old news; one whose prev_ids we
// have all seen (none newer than the last stream_id applied) is applied;
// otherwise an update was lost and the whole list is fetched again from
// the user's server (/user/devices/{userId}) and replaces the cache. If
// that fails the cache is dropped, so that queries ask the user's server
// until the list is cached again. Updates about users whose list is not
// cached start the cache (with a fetch) when a local user shares a room
// with them, so that their room-mates' /sync shows the change, and are
// ignored otherwise.

// KeyUpdateKeys is what KeyUpdates needs from the key server.
type KeyUpdateKeys interface {
	RemoteDeviceListStreamID(ctx context.Context, userID string) (int64, bool, error)
	ApplyRemoteDeviceListUpdate(ctx context.Context, u keyserver.DeviceListUpdate) error
	ReplaceRemoteDeviceList(ctx context.Context, d keyserver.UserDevices) error
	ApplyRemoteCrossSigningKeys(ctx context.Context, userID string, master, selfSigning json.RawMessage) error
	ForgetRemoteDeviceList(ctx context.Context, userID string) error
}

// keyListFetcher is what KeyUpdates needs from RemoteKeys.
type keyListFetcher interface {
	SharesRoom(ctx context.Context, userID string) (bool, error)
	deviceList(ctx context.Context, timeout time.Duration, userID string) (*keyserver.UserDevices, error)
}

// KeyUpdates implements KeyUpdateSink: the transaction handler's way into
// the key server.
type KeyUpdates struct {
	keys   KeyUpdateKeys
	remote keyListFetcher
	log    *logrus.Entry
	// locks serialise the updates of one user (by hash).
	locks [64]sync.Mutex
}

var _ KeyUpdateSink = (*KeyUpdates)(nil)

// NewKeyUpdates builds the sink for TransactionDeps.Keys.
func NewKeyUpdates(keys KeyUpdateKeys, remote *RemoteKeys) *KeyUpdates {
	return &KeyUpdates{keys: keys, remote: remote, log: logrus.WithField("component", "federationapi.keyupdates")}
}

func (k *KeyUpdates) lock(userID string) func() {
	h := fnv.New32a()
	_, _ = h.Write([]byte(userID))
	mu := &k.locks[h.Sum32()%uint32(len(k.locks))]
	mu.Lock()
	return mu.Unlock
}

// deviceListUpdateContent is m.device_list_update's content.
type deviceListUpdateContent struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	DisplayName string          `json:"device_display_name"`
	StreamID    *int64          `json:"stream_id"`
	PrevID      []int64         `json:"prev_id"`
	Deleted     bool            `json:"deleted"`
	Keys        json.RawMessage `json:"keys"`
}

// RemoteDeviceListUpdate applies an m.device_list_update.
func (k *KeyUpdates) RemoteDeviceListUpdate(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c deviceListUpdateContent
	if err := json.Unmarshal(content, &c); err != nil || c.StreamID == nil ||
		userServerName(c.UserID) != origin || len(c.UserID) > maxEDUStringSize || !validText(c.UserID) ||
		c.DeviceID == "" || len(c.DeviceID) > maxEDUStringSize || !validText(c.DeviceID) ||
		len(c.DisplayName) > maxEDUStringSize || !validText(c.DisplayName) || len(c.PrevID) > maxEDUEntries {
		return errSkip
	}
	defer k.lock(c.UserID)()
	cur, cached, err := k.keys.RemoteDeviceListStreamID(ctx, c.UserID)
	if err != nil {
		return err
	}
	if !cached {
		return k.startCache(ctx, c.UserID)
	}
	if *c.StreamID <= cur {
		return nil // seen already (or covered by a resync)
	}
	for _, p := range c.PrevID {
		if p > cur {
			k.log.WithFields(logrus.Fields{"user_id": c.UserID, "prev_id": p, "stream_id": cur}).Info("device list update after a gap; resyncing")
			return k.resync(ctx, c.UserID)
		}
	}
	u := keyserver.DeviceListUpdate{
		UserID: c.UserID, DeviceID: c.DeviceID, DisplayName: c.DisplayName,
		StreamID: *c.StreamID, PrevIDs: c.PrevID, Deleted: c.Deleted,
	}
	if !isJSONNull(c.Keys) {
		u.Keys = c.Keys
	}
	err = k.keys.ApplyRemoteDeviceListUpdate(ctx, u)
	var ke *keyserver.Error
	if errors.As(err, &ke) {
		// Keys that do not check out: the stream ID is not taken, so the
		// next update sees a gap and resyncs.
		return errSkip
	}
	return err
}

// RemoteSigningKeyUpdate applies an m.signing_key_update.
func (k *KeyUpdates) RemoteSigningKeyUpdate(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c struct {
		UserID         string          `json:"user_id"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(content, &c); err != nil || userServerName(c.UserID) != origin ||
		len(c.UserID) > maxEDUStringSize || !validText(c.UserID) {
		return errSkip
	}
	defer k.lock(c.UserID)()
	_, cached, err := k.keys.RemoteDeviceListStreamID(ctx, c.UserID)
	if err != nil {
		return err
	}
	if !cached {
		return k.startCache(ctx, c.UserID)
	}
	err = k.keys.ApplyRemoteCrossSigningKeys(ctx, c.UserID, c.MasterKey, c.SelfSigningKey)
	var ke *keyserver.Error
	if errors.As(err, &ke) {
		// Keys that do not check out (a self-signing key not signed by
		// the master key we hold): take the whole list again.
		return k.resync(ctx, c.UserID)
	}
	return err
}

// startCache fetches and caches the list of a user whose list is not
// cached, when a local user shares a room with them.
func (k *KeyUpdates) startCache(ctx context.Context, userID string) error {
	shares, err := k.remote.SharesRoom(ctx, userID)
	if err != nil || !shares {
		return err
	}
	return k.resync(ctx, userID)
}

// resync replaces a user's cached list with the one their server has now;
// when that fails, the cache is dropped.
func (k *KeyUpdates) resync(ctx context.Context, userID string) error {
	d, err := k.remote.deviceList(ctx, keysResyncTimeout, userID)
	if err == nil && d != nil {
		if err = k.keys.ReplaceRemoteDeviceList(ctx, *d); err == nil {
			return nil
		}
	}
	if err == nil {
		err = errors.New("the user's server does not know them")
	}
	k.log.WithError(err).WithField("user_id", userID).Warn("cannot resync a remote device list; dropping it from the cache")
	return k.keys.ForgetRemoteDeviceList(ctx, userID)
}

func isJSONNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}
