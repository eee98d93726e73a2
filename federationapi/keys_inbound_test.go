package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/keyserver"
	"github.com/plexus-chat/plexus/keyserver/keytest"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// keysFakeFetcher plays the remote users' server for KeyUpdates.
type keysFakeFetcher struct {
	mu        sync.Mutex
	lists     map[string]*keyserver.UserDevices
	roomMates map[string]bool
	fail      bool
	fetched   []string
}

func (f *keysFakeFetcher) SharesRoom(_ context.Context, userID string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.roomMates[userID], nil
}

func (f *keysFakeFetcher) deviceList(_ context.Context, _ time.Duration, userID string) (*keyserver.UserDevices, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fetched = append(f.fetched, userID)
	if f.fail {
		return nil, errors.New("down")
	}
	return f.lists[userID], nil
}

func (f *keysFakeFetcher) takeFetched() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.fetched
	f.fetched = nil
	return out
}

type keysNoAccounts struct{}

func (keysNoAccounts) Devices(context.Context, string) ([]accounts.Device, error) { return nil, nil }

func newKeysTestServer(t *testing.T, db *storage.DB, name string) *keyserver.KeyServer {
	t.Helper()
	ks, err := keyserver.New(context.Background(), db, name, keysNoAccounts{})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func keysEDU(t *testing.T, v map[string]any) json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestKeyUpdatesOrder walks m.device_list_update through the rules:
// uncached users, in-order updates, old news, gaps, failed resyncs, bad
// keys, and m.signing_key_update.
func TestKeyUpdatesOrder(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks := newKeysTestServer(t, db, "local.test")
		const origin = spec.ServerName("remote.test")
		bob, carol := "@bob:remote.test", "@carol:remote.test"
		phone, laptop, tablet := keytest.NewDevice(t, bob, "PHONE"), keytest.NewDevice(t, bob, "LAPTOP"), keytest.NewDevice(t, bob, "TABLET")
		fetcher := &keysFakeFetcher{
			lists: map[string]*keyserver.UserDevices{
				bob: {UserID: bob, StreamID: 5, Devices: []keyserver.UserDevice{{DeviceID: "PHONE", Keys: phone.DeviceKeys()}}},
			},
			roomMates: map[string]bool{bob: true},
		}
		k := &KeyUpdates{keys: ks, remote: fetcher, log: logrus.WithField("test", t.Name())}
		update := func(user, device string, stream int64, prev []int64, keys json.RawMessage) error {
			c := map[string]any{"user_id": user, "device_id": device, "stream_id": stream, "prev_id": prev}
			if keys != nil {
				c["keys"] = keys
			} else {
				c["deleted"] = true
			}
			return k.RemoteDeviceListUpdate(ctx, origin, keysEDU(t, c))
		}
		devices := func(user string) []string {
			t.Helper()
			q, err := ks.QueryKeys(ctx, "@alice:local.test", map[string][]string{user: nil})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for id := range q.DeviceKeys[user] {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			return ids
		}
		streamID := func(user string) int64 {
			id, _, err := ks.RemoteDeviceListStreamID(ctx, user)
			if err != nil {
				t.Fatal(err)
			}
			return id
		}

		// Not a room-mate: ignored, nothing fetched.
		if err := update(carol, "X", 1, nil, nil); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := ks.RemoteDeviceListStreamID(ctx, carol); ok || len(fetcher.takeFetched()) != 0 {
			t.Fatal("an update about a user sharing no room was taken")
		}
		// A room-mate not cached yet: the whole list is fetched.
		if err := update(bob, "LAPTOP", 6, []int64{5}, laptop.DeviceKeys()); err != nil {
			t.Fatal(err)
		}
		if got := fetcher.takeFetched(); !slices.Equal(got, []string{bob}) || streamID(bob) != 5 || !slices.Equal(devices(bob), []string{"PHONE"}) {
			t.Fatalf("first update: fetched %v, stream %d, devices %v", got, streamID(bob), devices(bob))
		}
		// In order: applied without asking.
		if err := update(bob, "LAPTOP", 6, []int64{5}, laptop.DeviceKeys()); err != nil {
			t.Fatal(err)
		}
		if got := fetcher.takeFetched(); len(got) != 0 || streamID(bob) != 6 || !slices.Equal(devices(bob), []string{"LAPTOP", "PHONE"}) {
			t.Fatalf("in order: fetched %v, stream %d, devices %v", got, streamID(bob), devices(bob))
		}
		// Old news (a repeat, or older than a resync): ignored.
		if err := update(bob, "LAPTOP", 6, []int64{5}, nil); err != nil {
			t.Fatal(err)
		}
		if err := update(bob, "PHONE", 3, nil, nil); err != nil {
			t.Fatal(err)
		}
		if streamID(bob) != 6 || !slices.Equal(devices(bob), []string{"LAPTOP", "PHONE"}) {
			t.Fatalf("old news applied: stream %d, devices %v", streamID(bob), devices(bob))
		}
		// prev_ids at or below what we have are seen; empty ones too.
		if err := update(bob, "TABLET", 8, []int64{4}, tablet.DeviceKeys()); err != nil {
			t.Fatal(err)
		}
		if got := fetcher.takeFetched(); len(got) != 0 || streamID(bob) != 8 {
			t.Fatalf("known prev_id: fetched %v, stream %d", got, streamID(bob))
		}
		// A gap: fetched again, replacing the cache.
		fetcher.lists[bob] = &keyserver.UserDevices{UserID: bob, StreamID: 11, Devices: []keyserver.UserDevice{{DeviceID: "TABLET", Keys: tablet.DeviceKeys()}}}
		if err := update(bob, "PHONE", 12, []int64{8, 11}, nil); err != nil {
			t.Fatal(err)
		}
		if got := fetcher.takeFetched(); !slices.Equal(got, []string{bob}) || streamID(bob) != 11 || !slices.Equal(devices(bob), []string{"TABLET"}) {
			t.Fatalf("gap: fetched %v, stream %d, devices %v", got, streamID(bob), devices(bob))
		}
		// Keys that are not the device's: skipped, so the next update
		// sees a gap.
		if err := update(bob, "LAPTOP", 12, []int64{11}, phone.DeviceKeys()); !errors.Is(err, errSkip) || streamID(bob) != 11 {
			t.Fatalf("bad keys: %v, stream %d", err, streamID(bob))
		}
		// A gap whose resync fails: the cache is dropped.
		fetcher.fail = true
		pos := ks.DeviceListPosition()
		if err := update(bob, "LAPTOP", 14, []int64{13}, laptop.DeviceKeys()); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := ks.RemoteDeviceListStreamID(ctx, bob); ok || ks.DeviceListPosition() == pos {
			t.Fatal("the list stayed cached after a failed resync")
		}
		fetcher.takeFetched()

		// m.signing_key_update: starts the cache of an uncached room-mate,
		// then applies to it.
		fetcher.fail = false
		cs := keytest.NewCrossSigning(t, bob)
		signing := func(master, self json.RawMessage) error {
			return k.RemoteSigningKeyUpdate(ctx, origin, keysEDU(t, map[string]any{"user_id": bob, "master_key": master, "self_signing_key": self}))
		}
		if err := signing(cs.MasterKey(), cs.SelfSigningKey()); err != nil {
			t.Fatal(err)
		}
		if got := fetcher.takeFetched(); !slices.Equal(got, []string{bob}) {
			t.Fatalf("signing key update of an uncached user: fetched %v", got)
		}
		if err := signing(cs.MasterKey(), cs.SelfSigningKey()); err != nil {
			t.Fatal(err)
		}
		q, _ := ks.QueryKeys(ctx, "@alice:local.test", map[string][]string{bob: nil})
		if q.MasterKeys[bob] == nil || q.SelfSigningKeys[bob] == nil || len(fetcher.takeFetched()) != 0 {
			t.Fatalf("signing keys: %+v", q)
		}
		// Users of another server, or no content: skipped.
		if err := k.RemoteDeviceListUpdate(ctx, "other.test", keysEDU(t, map[string]any{"user_id": bob, "device_id": "X", "stream_id": 99})); !errors.Is(err, errSkip) {
			t.Fatalf("another server's user: %v", err)
		}
		if err := k.RemoteDeviceListUpdate(ctx, origin, keysEDU(t, map[string]any{"user_id": bob, "device_id": "X"})); !errors.Is(err, errSkip) {
			t.Fatalf("no stream_id: %v", err)
		}
	})
}
