package federationapi_test

import (
	"context"
	"encoding/base64"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/keyserver"
	"github.com/plexus-chat/plexus/keyserver/keytest"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// End-to-end encryption keys between real servers (keys*.go): queries and
// claims of another server's users, device list updates and cross-signing
// keys both ways, and a resync after a lost update.

const (
	ksUploadPath     = "/_matrix/client/v3/keys/upload"
	ksQueryPath      = "/_matrix/client/v3/keys/query"
	ksClaimPath      = "/_matrix/client/v3/keys/claim"
	ksSigningPath    = "/_matrix/client/v3/keys/device_signing/upload"
	ksSignaturesPath = "/_matrix/client/v3/keys/signatures/upload"
)

// ksDevice uploads a logged-in device's identity keys and n one-time keys.
func ksDevice(t *testing.T, s *testserver.Server, u *testserver.User, n int) *keytest.Device {
	t.Helper()
	d := keytest.NewDevice(t, u.UserID, u.DeviceID)
	s.MustOK("POST", ksUploadPath, u.AccessToken, map[string]any{"device_keys": d.DeviceKeys(), "one_time_keys": d.OneTimeKeys(0, n)})
	return d
}

// ksQuery is u's /keys/query of users on s.
func ksQuery(t *testing.T, s *testserver.Server, u *testserver.User, users ...string) gjson.Result {
	t.Helper()
	q := map[string][]string{}
	for _, id := range users {
		q[id] = []string{}
	}
	return s.MustOK("POST", ksQueryPath, u.AccessToken, map[string]any{"device_keys": q}).JSON()
}

// ksDevices are the device IDs of a user in a /keys/query answer, sorted.
func ksDevices(r gjson.Result, userID string) []string {
	var ids []string
	for id := range r.Get("device_keys." + gjson.Escape(userID)).Map() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// ksQueryUntil repeats a query until cond holds.
func ksQueryUntil(t *testing.T, s *testserver.Server, u *testserver.User, userID, what string, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := ksQuery(t, s, u, userID)
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, r.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ksChanged syncs until userID is in device_lists.changed.
func ksChanged(t *testing.T, s *testserver.Server, u *testserver.User, since *string, userID, what string) {
	t.Helper()
	txSyncUntil(t, s, u, since, what, func(r gjson.Result) bool {
		return slices.ContainsFunc(r.Get("device_lists.changed").Array(), func(v gjson.Result) bool { return v.Str == userID })
	})
}

// ksDatabases runs fn on SQLite servers and, when PLEXUS_TEST_POSTGRES
// is set, on PostgreSQL ones (a schema each).
func ksDatabases(t *testing.T, fn func(t *testing.T, opts ...testserver.Option)) {
	t.Run("sqlite", func(t *testing.T) { fn(t) })
	if pg := os.Getenv(storagetest.PostgresEnv); pg != "" {
		t.Run("postgres", func(t *testing.T) {
			fn(t, func(c *config.Config) { c.Database = storagetest.NewPostgresSchema(t, pg) })
		})
	}
}

// ksRoomMates has alice on a and bob on b in alice's room, bob joined
// over federation.
func ksRoomMates(t *testing.T, opts ...testserver.Option) (a, b *testserver.Server, alice, bob *testserver.User) {
	servers := testserver.NewFederated(t, 2, opts...)
	a, b = servers[0], servers[1]
	alice, bob = a.Register("alice", "password1234"), b.Register("bob", "password1234")
	roomID := a.MustOK("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").Str
	b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{})
	return a, b, alice, bob
}

func ksStreamID(t *testing.T, s *testserver.Server, userID string) (int64, bool) {
	t.Helper()
	id, ok, err := s.Server.Keys.RemoteDeviceListStreamID(context.Background(), userID)
	if err != nil {
		t.Fatal(err)
	}
	return id, ok
}

func TestKeysOverFederation(t *testing.T) {
	ksDatabases(t, testKeysOverFederation)
}

func testKeysOverFederation(t *testing.T, opts ...testserver.Option) {
	a, b, alice, bob := ksRoomMates(t, opts...)
	phone := ksDevice(t, a, alice, 2)

	// bob's server asks alice's (/user/devices: they share a room, so the
	// list is cached from now on).
	r := ksQuery(t, b, bob, alice.UserID)
	dev := r.Get("device_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID))
	if len(r.Get("failures").Map()) != 0 || dev.Get("keys."+gjson.Escape(phone.KeyID())).Str != phone.Ed25519.Public {
		t.Fatalf("query through b: %s", r.Raw)
	}
	pub, _ := base64.RawStdEncoding.DecodeString(phone.Ed25519.Public)
	if err := gomatrixserverlib.VerifyJSON(alice.UserID, gomatrixserverlib.KeyID(phone.KeyID()), pub, []byte(dev.Raw)); err != nil {
		t.Fatalf("alice's keys lost their signature on the way: %v\n%s", err, dev.Raw)
	}
	if _, ok := ksStreamID(t, b, alice.UserID); !ok {
		t.Fatal("b did not cache the list of a room-mate")
	}

	// One-time keys are claimed on alice's server, each once.
	var claimed []string
	for range 3 {
		c := b.MustOK("POST", ksClaimPath, bob.AccessToken, map[string]any{
			"one_time_keys": map[string]any{alice.UserID: map[string]string{alice.DeviceID: "signed_curve25519"}},
		}).JSON()
		if len(c.Get("failures").Map()) != 0 {
			t.Fatalf("claim: %s", c.Raw)
		}
		for id := range c.Get("one_time_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID)).Map() {
			claimed = append(claimed, id)
		}
	}
	if slices.Sort(claimed); !slices.Equal(claimed, []string{"signed_curve25519:AAA0", "signed_curve25519:AAA1"}) {
		t.Fatalf("claimed %v", claimed)
	}
	if counts, _, _ := a.Server.Keys.KeyCounts(context.Background(), alice.UserID, alice.DeviceID); counts["signed_curve25519"] != 0 {
		t.Fatalf("alice's one-time keys left: %v", counts)
	}

	// alice adds a device: bob hears of it in /sync and sees it.
	var since string
	txSyncUntil(t, b, bob, &since, "bob's first sync", func(gjson.Result) bool { return true })
	laptop := a.Login("alice", "password1234")
	ksDevice(t, a, laptop, 1)
	ksChanged(t, b, bob, &since, alice.UserID, "alice's new device in bob's device_lists")
	if got := ksDevices(ksQuery(t, b, bob, alice.UserID), alice.UserID); !slices.Equal(got, sorted(alice.DeviceID, laptop.DeviceID)) {
		t.Fatalf("alice's devices on b: %v", got)
	}
	want, err := a.Server.Keys.UserDevices(context.Background(), alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := ksStreamID(t, b, alice.UserID); got != want.StreamID {
		t.Fatalf("b's stream_id for alice %d, a's %d", got, want.StreamID)
	}

	// Cross-signing keys cross (m.signing_key_update), and so does a
	// device's new signature (m.device_list_update).
	cs := keytest.NewCrossSigning(t, alice.UserID)
	a.MustOK("POST", ksSigningPath, alice.AccessToken, cs.Upload())
	ksChanged(t, b, bob, &since, alice.UserID, "alice's cross-signing keys in bob's device_lists")
	r = ksQuery(t, b, bob, alice.UserID)
	master := r.Get("master_keys." + gjson.Escape(alice.UserID))
	if master.Get("keys."+gjson.Escape("ed25519:"+cs.Master.Public)).Str != cs.Master.Public ||
		!r.Get("self_signing_keys."+gjson.Escape(alice.UserID)).Exists() || r.Get("user_signing_keys."+gjson.Escape(alice.UserID)).Exists() {
		t.Fatalf("alice's cross-signing keys on b: %s", r.Raw)
	}
	a.MustOK("POST", ksSignaturesPath, alice.AccessToken, map[string]any{
		alice.UserID: map[string]any{alice.DeviceID: cs.SignDevice(phone.DeviceKeys())},
	})
	ksChanged(t, b, bob, &since, alice.UserID, "the signature of alice's device in bob's device_lists")
	sig := "device_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID) + ".signatures." + gjson.Escape(alice.UserID) + "." + gjson.Escape("ed25519:"+cs.SelfSigning.Public)
	if r := ksQuery(t, b, bob, alice.UserID); !r.Get(sig).Exists() {
		t.Fatalf("the device's cross-signing signature on b: %s", r.Raw)
	}

	// The other way: alice's first query of bob asks b.
	bobDev := ksDevice(t, b, bob, 1)
	bobCS := keytest.NewCrossSigning(t, bob.UserID)
	b.MustOK("POST", ksSigningPath, bob.AccessToken, bobCS.Upload())
	// (bob's updates may reach a first, and start its cache: then the
	// cross-signing keys follow in their own EDU.)
	ksQueryUntil(t, a, alice, bob.UserID, "bob's keys on a", func(r gjson.Result) bool {
		return r.Get("device_keys."+gjson.Escape(bob.UserID)+"."+gjson.Escape(bob.DeviceID)+".keys."+gjson.Escape(bobDev.KeyID())).Str == bobDev.Ed25519.Public &&
			r.Get("master_keys."+gjson.Escape(bob.UserID)).Exists() && r.Get("self_signing_keys."+gjson.Escape(bob.UserID)).Exists()
	})
	if _, ok := ksStreamID(t, a, bob.UserID); !ok {
		t.Fatal("a did not cache the list of a room-mate")
	}
	// bob's key, claimed from a.
	c := a.MustOK("POST", ksClaimPath, alice.AccessToken, map[string]any{
		"one_time_keys": map[string]any{bob.UserID: map[string]string{bob.DeviceID: "signed_curve25519"}},
	}).JSON()
	if !c.Get("one_time_keys." + gjson.Escape(bob.UserID) + "." + gjson.Escape(bob.DeviceID) + "." + gjson.Escape("signed_curve25519:AAA0")).Exists() {
		t.Fatalf("claim of bob's key: %s", c.Raw)
	}
}

// TestDeviceListGapResyncs: an update whose prev_id b has not seen makes
// b fetch the whole list again.
func TestDeviceListGapResyncs(t *testing.T) {
	ksDatabases(t, testDeviceListGapResyncs)
}

func testDeviceListGapResyncs(t *testing.T, opts ...testserver.Option) {
	a, b, alice, bob := ksRoomMates(t, opts...)
	ksDevice(t, a, alice, 0)
	if got := ksDevices(ksQuery(t, b, bob, alice.UserID), alice.UserID); !slices.Equal(got, []string{alice.DeviceID}) {
		t.Fatalf("alice's devices on b: %v", got)
	}
	// (Cached from /user/keys/query, without a stream_id, or from a resync
	// when alice's upload reached b first: either way, from the first
	// update on, b's stream_ids for alice are a's.)
	second := a.Login("alice", "password1234")
	ksDevice(t, a, second, 0)
	ksQueryUntil(t, b, bob, alice.UserID, "alice's second device on b", func(r gjson.Result) bool {
		return len(ksDevices(r, alice.UserID)) == 2
	})
	before, _ := ksStreamID(t, b, alice.UserID)

	// The third device's update comes in order...
	third := a.Login("alice", "password1234")
	ksDevice(t, a, third, 0)
	ksQueryUntil(t, b, bob, alice.UserID, "alice's third device on b", func(r gjson.Result) bool {
		return len(ksDevices(r, alice.UserID)) == 3
	})
	// ...but say b lost it: its cache goes back to how it was before.
	if err := b.Server.Keys.ApplyRemoteDeviceListUpdate(context.Background(), keyserver.DeviceListUpdate{
		UserID: alice.UserID, DeviceID: third.DeviceID, StreamID: before, Deleted: true,
	}); err != nil {
		t.Fatal(err)
	}
	if got := ksDevices(ksQuery(t, b, bob, alice.UserID), alice.UserID); !slices.Equal(got, sorted(alice.DeviceID, second.DeviceID)) {
		t.Fatalf("the rewound cache: %v", got)
	}

	// The next update names the lost one as prev_id: b resyncs, and has
	// all four devices.
	fourth := a.Login("alice", "password1234")
	ksDevice(t, a, fourth, 0)
	ksQueryUntil(t, b, bob, alice.UserID, "all of alice's devices on b after the resync", func(r gjson.Result) bool {
		return slices.Equal(ksDevices(r, alice.UserID), sorted(alice.DeviceID, second.DeviceID, third.DeviceID, fourth.DeviceID))
	})
	want, err := a.Server.Keys.UserDevices(context.Background(), alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := ksStreamID(t, b, alice.UserID); got != want.StreamID {
		t.Fatalf("b's stream_id for alice %d, a's %d", got, want.StreamID)
	}

	// A deleted device is an update too.
	a.MustOK("POST", "/_matrix/client/v3/delete_devices", alice.AccessToken, map[string]any{
		"devices": []string{fourth.DeviceID},
		"auth":    map[string]any{"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "alice"}, "password": "password1234"},
	})
	ksQueryUntil(t, b, bob, alice.UserID, "the deleted device gone from b", func(r gjson.Result) bool {
		return slices.Equal(ksDevices(r, alice.UserID), sorted(alice.DeviceID, second.DeviceID, third.DeviceID))
	})
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}
