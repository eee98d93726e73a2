package keyserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/keyserver"
	"github.com/plexus-chat/plexus/keyserver/keytest"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

const hs = "hs.test"

// fakeAccounts lists devices per localpart.
type fakeAccounts struct {
	mu      sync.Mutex
	devices map[string][]accounts.Device
}

func (f *fakeAccounts) Devices(ctx context.Context, localpart string) ([]accounts.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.devices[localpart], nil
}

func (f *fakeAccounts) add(localpart, deviceID, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices[localpart] = append(f.devices[localpart], accounts.Device{Localpart: localpart, DeviceID: deviceID, DisplayName: name})
}

func newKeyServer(t *testing.T, db *storage.DB) (*keyserver.KeyServer, *fakeAccounts) {
	t.Helper()
	accts := &fakeAccounts{devices: map[string][]accounts.Device{}}
	ks, err := keyserver.New(context.Background(), db, hs, accts)
	if err != nil {
		t.Fatal(err)
	}
	return ks, accts
}

func errCode(err error) keyserver.ErrorCode {
	var ke *keyserver.Error
	if errors.As(err, &ke) {
		return ke.Code
	}
	return 0
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestUploadQueryAndStream(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, accts := newKeyServer(t, db)
		alice := "@alice:" + hs
		accts.add("alice", "PHONE", "Alice's phone")
		phone := keytest.NewDevice(t, alice, "PHONE")

		start := ks.DeviceListPosition()
		counts, err := ks.UploadKeys(ctx, keyserver.UploadRequest{
			UserID: alice, DeviceID: "PHONE", DeviceKeys: phone.DeviceKeys(),
			OneTimeKeys: phone.OneTimeKeys(0, 3), FallbackKeys: phone.FallbackKey("FB1"),
		})
		if err != nil {
			t.Fatal(err)
		}
		if counts["signed_curve25519"] != 3 {
			t.Fatalf("counts: %v", counts)
		}
		pos := ks.DeviceListPosition()
		if pos != start+1 {
			t.Fatalf("device list position %d after one upload from %d", pos, start)
		}
		// The same device keys again change nothing.
		if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: "PHONE", DeviceKeys: phone.DeviceKeys()}); err != nil {
			t.Fatal(err)
		}
		if ks.DeviceListPosition() != pos {
			t.Fatal("re-uploading the same device keys moved the stream")
		}
		users, err := ks.DeviceListChanges(ctx, start, pos)
		if err != nil || len(users) != 1 || users[0] != alice {
			t.Fatalf("changes: %v %v", users, err)
		}

		otks, fb, err := ks.KeyCounts(ctx, alice, "PHONE")
		if err != nil || otks["signed_curve25519"] != 3 || len(fb) != 1 || fb[0] != "signed_curve25519" {
			t.Fatalf("key counts: %v %v %v", otks, fb, err)
		}

		// Keys of a device accounts no longer knows are not served.
		ghost := keytest.NewDevice(t, alice, "GHOST")
		if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: "GHOST", DeviceKeys: ghost.DeviceKeys()}); err != nil {
			t.Fatal(err)
		}
		resp, err := ks.QueryKeys(ctx, "@bob:"+hs, map[string][]string{alice: nil, "@carol:elsewhere.test": nil})
		if err != nil {
			t.Fatal(err)
		}
		body := gjson.Parse(mustJSON(t, resp))
		if n := len(body.Get("device_keys." + gjson.Escape(alice)).Map()); n != 1 {
			t.Fatalf("want only PHONE: %s", body.Raw)
		}
		dev := body.Get("device_keys." + gjson.Escape(alice) + ".PHONE")
		if dev.Get("unsigned.device_display_name").String() != "Alice's phone" || dev.Get("keys.ed25519:PHONE").String() != phone.Ed25519.Public {
			t.Fatalf("device: %s", dev.Raw)
		}
		if !body.Get("failures." + gjson.Escape("elsewhere.test")).Exists() {
			t.Fatalf("remote server not in failures: %s", body.Raw)
		}

		// Conflicting one-time key: nothing of the upload is kept.
		again := phone.OneTimeKeys(0, 1)
		again["signed_curve25519:NEW"] = phone.Sign(map[string]any{"key": keytest.NewKey(t).Public})
		_, err = ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: "PHONE", OneTimeKeys: again})
		if errCode(err) != keyserver.CodeInvalidParam {
			t.Fatalf("conflicting one-time key: %v", err)
		}
		if otks, _, _ := ks.KeyCounts(ctx, alice, "PHONE"); otks["signed_curve25519"] != 3 {
			t.Fatalf("a failed upload stored keys: %v", otks)
		}

		// Deleting the device drops its keys and records the deletion.
		before := ks.DeviceListPosition()
		if err := ks.DeleteAllDeviceKeys(ctx, alice, "GHOST"); err != nil {
			t.Fatal(err)
		}
		if ks.DeviceListPosition() != before+1 {
			t.Fatal("deleting a device with keys did not move the stream")
		}
		if otks, fb, _ := ks.KeyCounts(ctx, alice, "PHONE"); otks["signed_curve25519"] != 0 || len(fb) != 0 {
			t.Fatalf("keys left after deletion: %v %v", otks, fb)
		}
		updates, err := ks.LocalDeviceListUpdates(ctx, start, 10)
		if err != nil || len(updates) != 3 {
			t.Fatalf("updates: %+v %v", updates, err)
		}
		last := updates[2]
		if last.DeviceID != "PHONE" || !last.Deleted || len(last.PrevIDs) != 1 || last.PrevIDs[0] != updates[1].StreamID {
			t.Fatalf("deletion update: %+v (all %+v)", last, updates)
		}
		// Updates carry the device's keys as they are now: PHONE's first
		// one reads as a deletion, GHOST's has its keys.
		if !updates[0].Deleted || len(updates[0].PrevIDs) != 0 {
			t.Fatalf("first update: %+v", updates[0])
		}
		if updates[1].DeviceID != "GHOST" || updates[1].Keys == nil || len(updates[1].PrevIDs) != 1 || updates[1].PrevIDs[0] != updates[0].StreamID {
			t.Fatalf("second update: %+v", updates[1])
		}
		// Deleting a device without keys records nothing.
		if err := ks.DeleteDeviceKeys(ctx, alice, []string{"NOKEYS"}); err != nil || ks.DeviceListPosition() != before+1 {
			t.Fatalf("deleting a device without keys: %v", err)
		}
	})
}

// TestClaimConcurrent has many claimers race for a device's one-time keys:
// each key is handed out once, and the rest get the fallback key.
func TestClaimConcurrent(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, accts := newKeyServer(t, db)
		alice := "@alice:" + hs
		accts.add("alice", "PHONE", "")
		phone := keytest.NewDevice(t, alice, "PHONE")
		const keys, claimers = 40, 60
		if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{
			UserID: alice, DeviceID: "PHONE", DeviceKeys: phone.DeviceKeys(),
			OneTimeKeys: phone.OneTimeKeys(0, keys), FallbackKeys: phone.FallbackKey("FB"),
		}); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		got := map[string]int{}
		var wg sync.WaitGroup
		errs := make(chan error, claimers)
		for range claimers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := ks.ClaimKeys(ctx, "@bob:"+hs, map[string]map[string]string{alice: {"PHONE": "signed_curve25519"}})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for id := range resp.OneTimeKeys[alice]["PHONE"] {
					got[id]++
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if len(got) != keys+1 {
			t.Fatalf("want %d distinct keys and the fallback, got %d: %v", keys, len(got), got)
		}
		for id, n := range got {
			if id == "signed_curve25519:FB" {
				if n != claimers-keys {
					t.Fatalf("fallback handed out %d times, want %d", n, claimers-keys)
				}
			} else if n != 1 {
				t.Fatalf("one-time key %s handed out %d times", id, n)
			}
		}
		if _, fb, _ := ks.KeyCounts(ctx, alice, "PHONE"); len(fb) != 0 {
			t.Fatalf("used fallback key still listed as unused: %v", fb)
		}
	})
}

func TestRemoteDeviceListCache(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, _ := newKeyServer(t, db)
		bob := "@bob:remote.test"
		laptop := keytest.NewDevice(t, bob, "LAPTOP")
		if _, ok, err := ks.RemoteDeviceListStreamID(ctx, bob); ok || err != nil {
			t.Fatalf("uncached user: %v %v", ok, err)
		}
		// A local user's list cannot be written from outside.
		if err := ks.ApplyRemoteDeviceListUpdate(ctx, keyserver.DeviceListUpdate{UserID: "@alice:" + hs, DeviceID: "X", StreamID: 1}); err == nil {
			t.Fatal("applied a remote update to a local user")
		}
		// Keys that are not the device's own are refused.
		other := keytest.NewDevice(t, bob, "OTHER")
		if err := ks.ApplyRemoteDeviceListUpdate(ctx, keyserver.DeviceListUpdate{UserID: bob, DeviceID: "LAPTOP", StreamID: 1, Keys: other.DeviceKeys()}); err == nil {
			t.Fatal("accepted another device's keys")
		}
		pos := ks.DeviceListPosition()
		if err := ks.ApplyRemoteDeviceListUpdate(ctx, keyserver.DeviceListUpdate{UserID: bob, DeviceID: "LAPTOP", DisplayName: "laptop", StreamID: 7, Keys: laptop.DeviceKeys()}); err != nil {
			t.Fatal(err)
		}
		if id, ok, err := ks.RemoteDeviceListStreamID(ctx, bob); id != 7 || !ok || err != nil {
			t.Fatalf("stream ID: %d %v %v", id, ok, err)
		}
		if users, _ := ks.DeviceListChanges(ctx, pos, ks.DeviceListPosition()); len(users) != 1 || users[0] != bob {
			t.Fatalf("remote change not in the stream: %v", users)
		}
		// Cached users are answered without asking their server.
		resp, err := ks.QueryKeys(ctx, "@alice:"+hs, map[string][]string{bob: nil})
		if err != nil || len(resp.Failures) != 0 || resp.DeviceKeys[bob]["LAPTOP"] == nil {
			t.Fatalf("cached query: %+v %v", resp, err)
		}
		// Remote updates are not ours to send on.
		if ups, _ := ks.LocalDeviceListUpdates(ctx, pos, 10); len(ups) != 0 {
			t.Fatalf("remote change among local updates: %+v", ups)
		}

		cs := keytest.NewCrossSigning(t, bob)
		if err := ks.ApplyRemoteCrossSigningKeys(ctx, bob, cs.MasterKey(), cs.SelfSigningKey()); err != nil {
			t.Fatal(err)
		}
		wrong := keytest.NewCrossSigning(t, bob)
		if err := ks.ApplyRemoteCrossSigningKeys(ctx, bob, nil, wrong.SelfSigningKey()); errCode(err) != keyserver.CodeInvalidSignature {
			t.Fatalf("self-signing key by another master: %v", err)
		}
		phone := keytest.NewDevice(t, bob, "PHONE")
		if err := ks.ReplaceRemoteDeviceList(ctx, keyserver.UserDevices{UserID: bob, StreamID: 9, Devices: []keyserver.UserDevice{
			{DeviceID: "PHONE", Keys: phone.DeviceKeys()},
		}}); err != nil {
			t.Fatal(err)
		}
		resp, _ = ks.QueryKeys(ctx, "@alice:"+hs, map[string][]string{bob: nil})
		if len(resp.DeviceKeys[bob]) != 1 || resp.DeviceKeys[bob]["PHONE"] == nil || resp.MasterKeys[bob] == nil || resp.SelfSigningKeys[bob] == nil {
			t.Fatalf("after resync: %s", mustJSON(t, resp))
		}
		if err := ks.ApplyRemoteDeviceListUpdate(ctx, keyserver.DeviceListUpdate{UserID: bob, DeviceID: "PHONE", StreamID: 10, Deleted: true}); err != nil {
			t.Fatal(err)
		}
		resp, _ = ks.QueryKeys(ctx, "@alice:"+hs, map[string][]string{bob: nil})
		if len(resp.DeviceKeys[bob]) != 0 {
			t.Fatalf("deleted device still served: %s", mustJSON(t, resp))
		}
	})
}

func TestUserDevices(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, accts := newKeyServer(t, db)
		alice := "@alice:" + hs
		for i := range 2 {
			id := fmt.Sprintf("D%d", i)
			accts.add("alice", id, "secret name")
			d := keytest.NewDevice(t, alice, id)
			if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: id, DeviceKeys: d.DeviceKeys()}); err != nil {
				t.Fatal(err)
			}
		}
		lastDevice := ks.DeviceListPosition()
		cs := keytest.NewCrossSigning(t, alice)
		if err := ks.UploadCrossSigningKeys(ctx, alice, keyserver.CrossSigningUpload{
			MasterKey: cs.MasterKey(), SelfSigningKey: cs.SelfSigningKey(), UserSigningKey: cs.UserSigningKey(),
		}, false); err != nil {
			t.Fatal(err)
		}
		ud, err := ks.UserDevices(ctx, alice)
		if err != nil {
			t.Fatal(err)
		}
		// stream_id is the last device change (what the next
		// m.device_list_update names as prev_id), not the cross-signing one.
		if len(ud.Devices) != 2 || ud.StreamID != lastDevice || ud.MasterKey == nil || ud.SelfSigningKey == nil {
			t.Fatalf("user devices: %+v", ud)
		}
		if gjson.GetBytes(ud.Devices[0].Keys, "unsigned").Exists() {
			t.Fatalf("device names go to other servers: %s", ud.Devices[0].Keys)
		}
		if _, err := ks.UserDevices(ctx, "@bob:remote.test"); errCode(err) != keyserver.CodeNotFound {
			t.Fatalf("remote user: %v", err)
		}
	})
}

func TestBackupVersions(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, _ := newKeyServer(t, db)
		alice := "@alice:" + hs
		auth := json.RawMessage(`{"public_key":"abc"}`)
		v1, err := ks.CreateBackup(ctx, alice, keyserver.BackupAlgorithm, auth)
		if err != nil || v1 != "1" {
			t.Fatalf("create: %q %v", v1, err)
		}
		if err := ks.DeleteBackup(ctx, alice, v1); err != nil {
			t.Fatal(err)
		}
		// Numbers are not reused after a deletion.
		v2, err := ks.CreateBackup(ctx, alice, keyserver.BackupAlgorithm, auth)
		if err != nil || v2 != "2" {
			t.Fatalf("create after delete: %q %v", v2, err)
		}
		// Other users count on their own.
		if v, _ := ks.CreateBackup(ctx, "@bob:"+hs, keyserver.BackupAlgorithm, auth); v != "1" {
			t.Fatalf("bob's first version: %q", v)
		}
		if _, _, err := ks.PutBackupKeys(ctx, alice, v1, keyserver.BackupKeys{}); errCode(err) != keyserver.CodeWrongBackupVersion {
			t.Fatalf("write to old version: %v", err)
		}
		if _, err := ks.CreateBackup(ctx, alice, "m.unknown", auth); errCode(err) != keyserver.CodeInvalidParam {
			t.Fatalf("unknown algorithm: %v", err)
		}
	})
}

// TestServerRequester: another server asking (requester "") gets only
// our users, and no user-signing keys or signatures.
func TestServerRequester(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, accts := newKeyServer(t, db)
		alice, bob := "@alice:"+hs, "@bob:"+hs
		accts.add("alice", "A", "")
		accts.add("bob", "B", "")
		for _, u := range []struct{ user, dev string }{{alice, "A"}, {bob, "B"}} {
			d := keytest.NewDevice(t, u.user, u.dev)
			if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: u.user, DeviceID: u.dev, DeviceKeys: d.DeviceKeys(), OneTimeKeys: d.OneTimeKeys(0, 1)}); err != nil {
				t.Fatal(err)
			}
		}
		aliceCS, bobCS := keytest.NewCrossSigning(t, alice), keytest.NewCrossSigning(t, bob)
		for _, cs := range []*keytest.CrossSigning{aliceCS, bobCS} {
			if err := ks.UploadCrossSigningKeys(ctx, cs.UserID, keyserver.CrossSigningUpload{
				MasterKey: cs.MasterKey(), SelfSigningKey: cs.SelfSigningKey(), UserSigningKey: cs.UserSigningKey(),
			}, false); err != nil {
				t.Fatal(err)
			}
		}
		failures, err := ks.UploadSignatures(ctx, alice, map[string]map[string]json.RawMessage{bob: {bobCS.Master.Public: aliceCS.SignUser(bobCS.MasterKey())}})
		if err != nil || len(failures) != 0 {
			t.Fatalf("sign bob: %v %v", failures, err)
		}
		resp, err := ks.QueryKeys(ctx, "", map[string][]string{alice: nil, bob: nil, "@carol:remote.test": nil})
		if err != nil {
			t.Fatal(err)
		}
		body := gjson.Parse(mustJSON(t, resp))
		if len(resp.Failures) != 0 || body.Get("device_keys."+gjson.Escape("@carol:remote.test")).Exists() {
			t.Fatalf("remote user asked about by a server: %s", body.Raw)
		}
		if len(resp.UserSigningKeys) != 0 || body.Get("master_keys."+gjson.Escape(bob)+".signatures."+gjson.Escape(alice)).Exists() {
			t.Fatalf("private keys or signatures for a server: %s", body.Raw)
		}
		if resp.MasterKeys[alice] == nil || resp.SelfSigningKeys[bob] == nil || resp.DeviceKeys[bob]["B"] == nil {
			t.Fatalf("public keys missing: %s", body.Raw)
		}
		claimed, err := ks.ClaimKeys(ctx, "", map[string]map[string]string{alice: {"A": "signed_curve25519"}, "@carol:remote.test": {"X": "signed_curve25519"}})
		if err != nil || len(claimed.OneTimeKeys[alice]["A"]) != 1 || len(claimed.Failures) != 0 {
			t.Fatalf("claim by a server: %+v %v", claimed, err)
		}
	})
}

// TestMasterKeySignedAtUpload: a master key uploaded with its device's
// signature may be sent again with that signature (clients do) without
// a failure.
func TestMasterKeySignedAtUpload(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		ks, accts := newKeyServer(t, db)
		alice := "@alice:" + hs
		accts.add("alice", "A", "")
		dev := keytest.NewDevice(t, alice, "A")
		if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: "A", DeviceKeys: dev.DeviceKeys()}); err != nil {
			t.Fatal(err)
		}
		cs := keytest.NewCrossSigning(t, alice)
		signedMaster := dev.Sign(cs.MasterKey())
		if err := ks.UploadCrossSigningKeys(ctx, alice, keyserver.CrossSigningUpload{MasterKey: signedMaster, SelfSigningKey: cs.SelfSigningKey()}, false); err != nil {
			t.Fatal(err)
		}
		failures, err := ks.UploadSignatures(ctx, alice, map[string]map[string]json.RawMessage{alice: {cs.Master.Public: signedMaster}})
		if err != nil || len(failures) != 0 {
			t.Fatalf("signature already held: %v %v", failures, err)
		}
		// Without any device signature it is a failure.
		failures, _ = ks.UploadSignatures(ctx, alice, map[string]map[string]json.RawMessage{alice: {cs.Master.Public: cs.MasterKey()}})
		if f := failures[alice][cs.Master.Public]; f == nil || f.Code != keyserver.CodeInvalidSignature {
			t.Fatalf("no signature: %+v", failures)
		}
	})
}
