package keyserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/keyserver"
	"github.com/plexus-chat/plexus/keyserver/keytest"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// fakeRemote plays the other servers: device lists per user (as
// /user/keys/query answers them), room-mates, servers that are down, and
// a log of what was asked.
type fakeRemote struct {
	mu        sync.Mutex
	lists     map[string]*keyserver.UserDevices
	roomMates map[string]bool
	down      map[string]bool
	calls     []string
	// queryHook, when set, runs at the start of each QueryKeys.
	queryHook func(server string)
}

func newFakeRemote() *fakeRemote {
	return &fakeRemote{lists: map[string]*keyserver.UserDevices{}, roomMates: map[string]bool{}, down: map[string]bool{}}
}

func (f *fakeRemote) log(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeRemote) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeRemote) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (*keyserver.QueryResponse, error) {
	f.log("query " + server)
	if f.queryHook != nil {
		f.queryHook(server)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[server] {
		return nil, errors.New("down")
	}
	resp := &keyserver.QueryResponse{DeviceKeys: map[string]map[string]json.RawMessage{}}
	for u := range deviceKeys {
		if l := f.lists[u]; l != nil {
			resp.DeviceKeys[u] = map[string]json.RawMessage{}
			for _, d := range l.Devices {
				resp.DeviceKeys[u][d.DeviceID] = d.Keys
			}
		}
	}
	// A server cannot speak for another's users.
	resp.DeviceKeys["@mallory:elsewhere.test"] = map[string]json.RawMessage{"X": json.RawMessage(`{}`)}
	return resp, nil
}

func (f *fakeRemote) ClaimKeys(ctx context.Context, server string, otks map[string]map[string]string) (map[string]map[string]map[string]json.RawMessage, error) {
	f.log("claim " + server)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[server] {
		return nil, errors.New("down")
	}
	out := map[string]map[string]map[string]json.RawMessage{}
	for u, devs := range otks {
		out[u] = map[string]map[string]json.RawMessage{}
		for d, alg := range devs {
			out[u][d] = map[string]json.RawMessage{alg + ":K": json.RawMessage(`{"key":"k"}`)}
		}
	}
	return out, nil
}

func (f *fakeRemote) SharesRoom(ctx context.Context, userID string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.roomMates[userID], nil
}

func newRemoteKeyServer(t *testing.T, db *storage.DB, remote keyserver.RemoteKeys) *keyserver.KeyServer {
	t.Helper()
	ks, err := keyserver.New(context.Background(), db, hs, &fakeAccounts{devices: map[string][]accounts.Device{}}, keyserver.WithRemoteKeys(remote))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// TestRemoteQueryCachesRoomMates: a room-mate's first query fetches and
// caches their list; later ones are answered from the cache. Users who
// share no room are asked about each time, and a cached user who no
// longer shares a room is dropped from the cache.
func TestRemoteQueryCachesRoomMates(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		remote := newFakeRemote()
		ks := newRemoteKeyServer(t, db, remote)
		alice := "@alice:" + hs
		bob, carol := "@bob:remote.test", "@carol:remote.test"
		for _, u := range []string{bob, carol} {
			d := keytest.NewDevice(t, u, "DEV")
			remote.lists[u] = &keyserver.UserDevices{UserID: u, StreamID: 4, Devices: []keyserver.UserDevice{{DeviceID: "DEV", Keys: d.DeviceKeys()}}}
		}
		remote.roomMates[bob] = true

		pos := ks.DeviceListPosition()
		resp, err := ks.QueryKeys(ctx, alice, map[string][]string{bob: nil, carol: nil})
		if err != nil {
			t.Fatal(err)
		}
		if resp.DeviceKeys[bob]["DEV"] == nil || resp.DeviceKeys[carol]["DEV"] == nil || len(resp.Failures) != 0 {
			t.Fatalf("first query: %s", mustJSON(t, resp))
		}
		if resp.DeviceKeys["@mallory:elsewhere.test"] != nil {
			t.Fatal("a server answered for another server's user")
		}
		if calls := remote.takeCalls(); !slices.Equal(calls, []string{"query remote.test"}) {
			t.Fatalf("calls: %v", calls)
		}
		// Cached without a stream_id (/user/keys/query has none): the
		// first update will resync.
		if id, ok, _ := ks.RemoteDeviceListStreamID(ctx, bob); !ok || id != 0 {
			t.Fatalf("bob not cached: %d %v", id, ok)
		}
		if _, ok, _ := ks.RemoteDeviceListStreamID(ctx, carol); ok {
			t.Fatal("carol, who shares no room, was cached")
		}
		// Starting the cache changes nothing clients would re-query for.
		if ks.DeviceListPosition() != pos {
			t.Fatal("caching moved the device list stream")
		}
		// Asked for one device, answered with that one from the cache.
		tablet := keytest.NewDevice(t, bob, "TABLET")
		if err := ks.ApplyRemoteDeviceListUpdate(ctx, keyserver.DeviceListUpdate{UserID: bob, DeviceID: "TABLET", StreamID: 5, Keys: tablet.DeviceKeys()}); err != nil {
			t.Fatal(err)
		}
		if resp, _ := ks.QueryKeys(ctx, alice, map[string][]string{bob: {"TABLET"}}); len(resp.DeviceKeys[bob]) != 1 || resp.DeviceKeys[bob]["TABLET"] == nil {
			t.Fatalf("one device: %s", mustJSON(t, resp))
		}
		remote.takeCalls()

		resp, err = ks.QueryKeys(ctx, alice, map[string][]string{bob: nil, carol: nil})
		if err != nil || resp.DeviceKeys[bob]["DEV"] == nil || resp.DeviceKeys[bob]["TABLET"] == nil || resp.DeviceKeys[carol]["DEV"] == nil {
			t.Fatalf("second query: %+v %v", resp, err)
		}
		if calls := remote.takeCalls(); !slices.Equal(calls, []string{"query remote.test"}) {
			t.Fatalf("calls: %v", calls)
		}

		// bob leaves the last shared room: no more updates, no cache.
		remote.mu.Lock()
		remote.roomMates[bob] = false
		remote.mu.Unlock()
		if resp, err = ks.QueryKeys(ctx, alice, map[string][]string{bob: nil}); err != nil || resp.DeviceKeys[bob]["DEV"] == nil {
			t.Fatalf("query after leaving: %+v %v", resp, err)
		}
		if _, ok, _ := ks.RemoteDeviceListStreamID(ctx, bob); ok {
			t.Fatal("bob still cached after sharing no room")
		}
		if calls := remote.takeCalls(); !slices.Equal(calls, []string{"query remote.test"}) {
			t.Fatalf("calls: %v", calls)
		}
	})
}

// TestRemoteFailures: an unreachable server is in failures, asked once
// for all its users; other servers still answer, in parallel.
func TestRemoteFailures(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		remote := newFakeRemote()
		ks := newRemoteKeyServer(t, db, remote)
		alice := "@alice:" + hs
		dave, erin, frank := "@dave:down.test", "@erin:down.test", "@frank:up.test"
		remote.down["down.test"] = true
		remote.roomMates[dave], remote.roomMates[erin] = true, true
		frankDev := keytest.NewDevice(t, frank, "F")
		remote.lists[frank] = &keyserver.UserDevices{UserID: frank, Devices: []keyserver.UserDevice{{DeviceID: "F", Keys: frankDev.DeviceKeys()}}}

		resp, err := ks.QueryKeys(ctx, alice, map[string][]string{dave: nil, erin: nil, frank: nil})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := resp.Failures["down.test"]; !ok || len(resp.Failures) != 1 || resp.DeviceKeys[frank]["F"] == nil {
			t.Fatalf("query: %s", mustJSON(t, resp))
		}
		calls := remote.takeCalls()
		n := 0
		for _, c := range calls {
			if c == "query down.test" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("the server that is down was asked %d times: %v", n, calls)
		}

		claimed, err := ks.ClaimKeys(ctx, alice, map[string]map[string]string{dave: {"D": "signed_curve25519"}, frank: {"F": "signed_curve25519"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := claimed.Failures["down.test"]; !ok || len(claimed.OneTimeKeys[frank]["F"]) != 1 {
			t.Fatalf("claim: %s", mustJSON(t, claimed))
		}

		// Servers are asked at once: each waits until the other was asked.
		var started sync.WaitGroup
		started.Add(2)
		remote.mu.Lock()
		remote.down = map[string]bool{}
		remote.roomMates = map[string]bool{}
		remote.mu.Unlock()
		remote.queryHook = func(string) {
			started.Done()
			done := make(chan struct{})
			go func() { started.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
		}
		start := time.Now()
		if _, err := ks.QueryKeys(ctx, alice, map[string][]string{dave: nil, frank: nil}); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 4*time.Second {
			t.Fatal("servers were asked one after the other")
		}
	})
}

// TestDeviceListChainSkipsCrossSigning: prev_id links device changes only,
// as cross-signing changes go as m.signing_key_update without a stream_id;
// a remote signing key update that changes nothing is not a change.
func TestDeviceListChainSkipsCrossSigning(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, accts := newKeyServer(t, db)
		alice := "@alice:" + hs
		start := ks.DeviceListPosition()
		accts.add("alice", "A", "")
		accts.add("alice", "B", "")
		a, b := keytest.NewDevice(t, alice, "A"), keytest.NewDevice(t, alice, "B")
		if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: "A", DeviceKeys: a.DeviceKeys()}); err != nil {
			t.Fatal(err)
		}
		cs := keytest.NewCrossSigning(t, alice)
		if err := ks.UploadCrossSigningKeys(ctx, alice, keyserver.CrossSigningUpload{MasterKey: cs.MasterKey(), SelfSigningKey: cs.SelfSigningKey()}, false); err != nil {
			t.Fatal(err)
		}
		if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: "B", DeviceKeys: b.DeviceKeys()}); err != nil {
			t.Fatal(err)
		}
		ups, err := ks.LocalDeviceListUpdates(ctx, start, 10)
		if err != nil || len(ups) != 3 {
			t.Fatalf("updates: %+v %v", ups, err)
		}
		if ups[0].DeviceID != "A" || len(ups[0].PrevIDs) != 0 || ups[1].DeviceID != "" || len(ups[1].PrevIDs) != 0 ||
			ups[2].DeviceID != "B" || !slices.Equal(ups[2].PrevIDs, []int64{ups[0].StreamID}) || ups[2].Keys == nil {
			t.Fatalf("chain: %+v", ups)
		}
		if ud, err := ks.UserDevices(ctx, alice); err != nil || ud.StreamID != ups[2].StreamID {
			t.Fatalf("user devices stream_id: %+v %v", ud, err)
		}

		bob := "@bob:remote.test"
		bobCS := keytest.NewCrossSigning(t, bob)
		if err := ks.ApplyRemoteCrossSigningKeys(ctx, bob, bobCS.MasterKey(), bobCS.SelfSigningKey()); err != nil {
			t.Fatal(err)
		}
		pos := ks.DeviceListPosition()
		if err := ks.ApplyRemoteCrossSigningKeys(ctx, bob, bobCS.MasterKey(), bobCS.SelfSigningKey()); err != nil {
			t.Fatal(err)
		}
		if ks.DeviceListPosition() != pos {
			t.Fatal("the same signing keys again moved the stream")
		}
	})
}

// TestForgetRemoteDeviceList drops a cached list and records the change.
func TestForgetRemoteDeviceList(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, _ := newKeyServer(t, db)
		bob := "@bob:remote.test"
		d := keytest.NewDevice(t, bob, "DEV")
		cs := keytest.NewCrossSigning(t, bob)
		if err := ks.ReplaceRemoteDeviceList(ctx, keyserver.UserDevices{UserID: bob, StreamID: 3,
			Devices: []keyserver.UserDevice{{DeviceID: "DEV", Keys: d.DeviceKeys()}}, MasterKey: cs.MasterKey(), SelfSigningKey: cs.SelfSigningKey()}); err != nil {
			t.Fatal(err)
		}
		pos := ks.DeviceListPosition()
		if err := ks.ForgetRemoteDeviceList(ctx, bob); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := ks.RemoteDeviceListStreamID(ctx, bob); ok {
			t.Fatal("still cached")
		}
		if users, _ := ks.DeviceListChanges(ctx, pos, ks.DeviceListPosition()); !slices.Equal(users, []string{bob}) {
			t.Fatalf("changes: %v", users)
		}
		// Not cached: nothing to do, no change.
		pos = ks.DeviceListPosition()
		if err := ks.ForgetRemoteDeviceList(ctx, bob); err != nil || ks.DeviceListPosition() != pos {
			t.Fatalf("forget again: %v", err)
		}
		if err := ks.ForgetRemoteDeviceList(ctx, "@alice:"+hs); errCode(err) != keyserver.CodeInvalidParam {
			t.Fatalf("local user: %v", err)
		}
		// Without RemoteKeys an uncached user's server is a failure.
		resp, err := ks.QueryKeys(ctx, "@alice:"+hs, map[string][]string{bob: nil})
		if _, failed := resp.Failures["remote.test"]; err != nil || !failed {
			t.Fatalf("query: %+v %v", resp, err)
		}
	})
}
