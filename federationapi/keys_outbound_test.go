package federationapi

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/keyserver"
	"github.com/plexus-chat/plexus/keyserver/keytest"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// TestDeviceListSender: our users' changes reach every server in their
// rooms as EDUs with a prev_id chain of device changes, cross-signing
// changes as m.signing_key_update; other servers' users' changes are not
// sent; a restart resumes from the stored position without resending.
func TestDeviceListSender(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		f := newSenderFixture(t, db)
		ks := newKeysTestServer(t, db, "local.test")
		alice := f.alice.ID()
		startDeviceLists := func() context.CancelFunc {
			d, err := NewDeviceListSender(ctx, f.sender, ks)
			if err != nil {
				t.Fatal(err)
			}
			run, cancel := context.WithCancel(ctx)
			d.Start(run)
			t.Cleanup(cancel) // before the sender's Wait
			return cancel
		}
		stop := startDeviceLists()

		upload := func(deviceID string) *keytest.Device {
			d := keytest.NewDevice(t, alice, deviceID)
			if _, err := ks.UploadKeys(ctx, keyserver.UploadRequest{UserID: alice, DeviceID: deviceID, DeviceKeys: d.DeviceKeys()}); err != nil {
				t.Fatal(err)
			}
			return d
		}
		// The EDUs a destination took, each transaction once (a receiver
		// ignores a transaction ID it has seen: one acknowledged just as
		// the sender stopped is sent again).
		edus := func(dest spec.ServerName, eduType string) []gjson.Result {
			f.remote.mu.Lock()
			defer f.remote.mu.Unlock()
			var out []gjson.Result
			seen := map[gomatrixserverlib.TransactionID]bool{}
			for _, tr := range f.remote.accepted {
				if tr.Destination != dest || seen[tr.TransactionID] {
					continue
				}
				seen[tr.TransactionID] = true
				for _, e := range tr.EDUs {
					if e.Type == eduType {
						out = append(out, gjson.ParseBytes(e.Content))
					}
				}
			}
			return out
		}

		phone := upload("PHONE")
		cs := keytest.NewCrossSigning(t, alice)
		if err := ks.UploadCrossSigningKeys(ctx, alice, keyserver.CrossSigningUpload{MasterKey: cs.MasterKey(), SelfSigningKey: cs.SelfSigningKey(), UserSigningKey: cs.UserSigningKey()}, false); err != nil {
			t.Fatal(err)
		}
		upload("LAPTOP")
		// (An update is built when it is sent, with the keys then: PHONE's
		// would say deleted if it were deleted by then.)
		for _, dest := range []spec.ServerName{"remote.test", "other.test"} {
			senderWait(t, "the first updates to "+string(dest), func() bool { return len(edus(dest, "m.device_list_update")) == 2 })
		}
		if err := ks.DeleteDeviceKeys(ctx, alice, []string{"PHONE"}); err != nil {
			t.Fatal(err)
		}
		// Another server's user's change is not ours to send.
		bob := "@bob:remote.test"
		if err := ks.ApplyRemoteDeviceListUpdate(ctx, keyserver.DeviceListUpdate{UserID: bob, DeviceID: "B", StreamID: 1, Keys: keytest.NewDevice(t, bob, "B").DeviceKeys()}); err != nil {
			t.Fatal(err)
		}

		for _, dest := range []spec.ServerName{"remote.test", "other.test"} {
			senderWait(t, "device list EDUs to "+string(dest), func() bool {
				return len(edus(dest, "m.device_list_update")) == 3 && len(edus(dest, "m.signing_key_update")) == 1
			})
			ups := edus(dest, "m.device_list_update")
			for _, u := range ups {
				if u.Get("user_id").Str != alice || u.Get("device_display_name").Exists() {
					t.Fatalf("update %s", u.Raw)
				}
			}
			if ups[0].Get("device_id").Str != "PHONE" || ups[0].Get("prev_id").Raw != "[]" || ups[0].Get("deleted").Bool() ||
				ups[0].Get("keys.keys."+gjson.Escape(phone.KeyID())).Str != phone.Ed25519.Public {
				t.Fatalf("first update %s", ups[0].Raw)
			}
			// The chain skips the cross-signing change in between.
			if ups[1].Get("device_id").Str != "LAPTOP" || ups[1].Get("prev_id").Raw != "["+ups[0].Get("stream_id").Raw+"]" || !ups[1].Get("keys").Exists() {
				t.Fatalf("second update %s after %s", ups[1].Raw, ups[0].Raw)
			}
			if ups[2].Get("device_id").Str != "PHONE" || !ups[2].Get("deleted").Bool() || ups[2].Get("keys").Exists() ||
				ups[2].Get("prev_id").Raw != "["+ups[1].Get("stream_id").Raw+"]" {
				t.Fatalf("deletion %s after %s", ups[2].Raw, ups[1].Raw)
			}
			sk := edus(dest, "m.signing_key_update")[0]
			if sk.Get("user_id").Str != alice || sk.Get("master_key.keys."+gjson.Escape("ed25519:"+cs.Master.Public)).Str != cs.Master.Public ||
				!sk.Get("self_signing_key").Exists() || sk.Get("user_signing_key").Exists() {
				t.Fatalf("signing key update %s", sk.Raw)
			}
		}

		// Restarted (device list sender and queues), nothing is sent again;
		// what changes meanwhile is.
		stop()
		f.stop()
		upload("TABLET")
		f.start()
		stop = startDeviceLists()
		defer stop()
		senderWait(t, "the change made while stopped", func() bool { return len(edus("remote.test", "m.device_list_update")) >= 4 })
		time.Sleep(100 * time.Millisecond)
		ups := edus("remote.test", "m.device_list_update")
		var devices []string
		for _, u := range ups {
			devices = append(devices, u.Get("device_id").Str)
		}
		if !slices.Equal(devices, []string{"PHONE", "LAPTOP", "PHONE", "TABLET"}) {
			t.Fatalf("updates after the restart: %v", devices)
		}
		var pos int64
		if err := db.Reader().QueryRowContext(ctx, sqlSenderPos, deviceListConsumer).Scan(&pos); err != nil || pos != ks.DeviceListPosition() {
			t.Fatalf("stored position %d, stream at %d: %v", pos, ks.DeviceListPosition(), err)
		}
	})
}
