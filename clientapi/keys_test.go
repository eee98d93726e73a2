package clientapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/keyserver/keytest"
)

const (
	keysUpload     = "/_matrix/client/v3/keys/upload"
	keysQuery      = "/_matrix/client/v3/keys/query"
	keysClaim      = "/_matrix/client/v3/keys/claim"
	keysSigning    = "/_matrix/client/v3/keys/device_signing/upload"
	keysSignatures = "/_matrix/client/v3/keys/signatures/upload"
)

// e2eeDevice uploads identity keys, n one-time keys and a fallback key
// for a logged-in device.
func e2eeDevice(t *testing.T, s *testserver.Server, u *testserver.User, n int) *keytest.Device {
	t.Helper()
	d := keytest.NewDevice(t, u.UserID, u.DeviceID)
	r := s.MustOK("POST", keysUpload, u.AccessToken, map[string]any{
		"device_keys": d.DeviceKeys(), "one_time_keys": d.OneTimeKeys(0, n), "fallback_keys": d.FallbackKey("FB"),
	})
	if got := r.Get("one_time_key_counts.signed_curve25519").Int(); got != int64(n) {
		t.Fatalf("upload: %s", r)
	}
	return d
}

func queryKeys(t *testing.T, s *testserver.Server, u *testserver.User, users ...string) gjson.Result {
	t.Helper()
	q := map[string][]string{}
	for _, id := range users {
		q[id] = []string{}
	}
	return s.MustOK("POST", keysQuery, u.AccessToken, map[string]any{"device_keys": q}).JSON()
}

// esc escapes a user ID or key for a gjson path.
func esc(s string) string { return gjson.Escape(s) }

func TestKeysUploadAndQuery(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		s.MustOK("PUT", "/_matrix/client/v3/devices/"+alice.DeviceID, alice.AccessToken, map[string]string{"display_name": "Alice's phone"})
		dev := e2eeDevice(t, s, alice, 5)

		// An upload with nothing in it reports the counts.
		r := s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{})
		if r.Get("one_time_key_counts.signed_curve25519").Int() != 5 {
			t.Fatalf("empty upload: %s", r)
		}

		q := queryKeys(t, s, bob, alice.UserID, "@carol:remote.example")
		d := q.Get("device_keys." + esc(alice.UserID) + "." + alice.DeviceID)
		if d.Get("user_id").String() != alice.UserID || d.Get("device_id").String() != alice.DeviceID ||
			d.Get("keys."+esc("ed25519:"+alice.DeviceID)).String() != dev.Ed25519.Public ||
			d.Get("keys."+esc("curve25519:"+alice.DeviceID)).String() != dev.Curve25519 ||
			!d.Get("signatures."+esc(alice.UserID)+"."+esc(dev.KeyID())).Exists() ||
			d.Get("unsigned.device_display_name").String() != "Alice's phone" {
			t.Fatalf("query: %s", q.Raw)
		}
		// Federation is not there yet: other servers' users are failures.
		if !q.Get("failures." + esc("remote.example")).IsObject() {
			t.Fatalf("remote user not in failures: %s", q.Raw)
		}
		// One device by ID; an unknown device is left out.
		r = s.MustOK("POST", keysQuery, bob.AccessToken, map[string]any{"device_keys": map[string][]string{alice.UserID: {"NOPE"}}})
		if n := len(r.Get("device_keys." + esc(alice.UserID)).Map()); n != 0 {
			t.Fatalf("unknown device: %s", r)
		}
		s.ExpectError(400, "M_MISSING_PARAM", "POST", keysQuery, bob.AccessToken, map[string]any{})
		s.ExpectError(401, "M_MISSING_TOKEN", "POST", keysQuery, "", map[string]any{"device_keys": map[string]any{}})
	})
}

func TestKeysUploadRejects(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	dev := keytest.NewDevice(t, alice.UserID, alice.DeviceID)

	// Device keys must be this user's and this device's.
	s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{
		"device_keys": keytest.NewDevice(t, bob.UserID, alice.DeviceID).DeviceKeys()})
	s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{
		"device_keys": keytest.NewDevice(t, alice.UserID, "OTHER").DeviceKeys()})
	// Key IDs are algorithm:id.
	badID, _ := sjson.SetBytes(dev.DeviceKeys(), "keys.nocolon", "x")
	s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{"device_keys": json.RawMessage(badID)})
	s.ExpectError(400, "M_BAD_JSON", "POST", keysUpload, alice.AccessToken, map[string]any{"one_time_keys": "nope"})

	s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{"device_keys": dev.DeviceKeys(), "one_time_keys": dev.OneTimeKeys(0, 3)})

	// One-time keys with bad IDs, or not in their algorithm's shape.
	otk := dev.Sign(map[string]any{"key": keytest.NewKey(t).Public})
	for _, id := range []string{"signed_curve25519", "signed_curve25519:", ":AAA"} {
		s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{"one_time_keys": map[string]any{id: otk}})
	}
	s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{"one_time_keys": map[string]any{
		"signed_curve25519:X": "a bare string"}})
	// Two fallback keys for one algorithm.
	two := dev.FallbackKey("F1")
	for k, v := range dev.FallbackKey("F2") {
		two[k] = v
	}
	s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{"fallback_keys": two})

	// The same key ID again: the same key is ignored, a different one refused.
	for range 2 {
		r := s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{"one_time_keys": map[string]any{"signed_curve25519:NEW": otk}})
		if r.Get("one_time_key_counts.signed_curve25519").Int() != 4 {
			t.Fatalf("upload: %s", r)
		}
	}
	s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{"one_time_keys": map[string]any{
		"signed_curve25519:NEW": dev.Sign(map[string]any{"key": keytest.NewKey(t).Public})}})
}

// The spec leaves signature checks to the clients that download keys
// (keyserver/devicekeys.go): placeholder keys with signatures that do not
// verify, device keys with only their owner, and one-time keys of
// algorithms the server does not know, as test suites upload them, are
// stored and served as they came.
func TestKeysUploadUncheckedSignatures(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	dev := alice.DeviceID
	sigs := map[string]any{alice.UserID: map[string]string{"ed25519:" + dev: "not+a+signature"}}
	r := s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{
		"device_keys": map[string]any{
			"user_id": alice.UserID, "device_id": dev, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
			"keys": map[string]string{"curve25519:" + dev: "curvepubkey", "ed25519:" + dev: "edpubkey"}, "signatures": sigs,
		},
		"one_time_keys": map[string]any{
			"my_algorithm:my_id_1":  "my+key",
			"signed_curve25519:AAA": map[string]any{"key": "otkpubkey", "signatures": sigs},
		},
	})
	if r.Get("one_time_key_counts.my_algorithm").Int() != 1 || r.Get("one_time_key_counts.signed_curve25519").Int() != 1 {
		t.Fatalf("upload: %s", r)
	}
	// SyTest's upload helper: device_keys with user_id and device_id only.
	s.MustOK("POST", keysUpload, bob.AccessToken, map[string]any{
		"device_keys":   map[string]any{"user_id": bob.UserID, "device_id": bob.DeviceID},
		"one_time_keys": map[string]any{"my_algorithm:my_id_1": "my+base64+key"},
	})
	if q := queryKeys(t, s, alice, bob.UserID); q.Get("device_keys."+esc(bob.UserID)+"."+bob.DeviceID+".device_id").String() != bob.DeviceID {
		t.Fatalf("query of bare device keys: %s", q.Raw)
	}
	q := queryKeys(t, s, bob, alice.UserID)
	if k := q.Get("device_keys." + esc(alice.UserID) + "." + dev + ".keys." + esc("ed25519:"+dev)).String(); k != "edpubkey" {
		t.Fatalf("query: %s", q.Raw)
	}
	for alg, want := range map[string]string{"my_algorithm": `"my+key"`, "signed_curve25519": "otkpubkey"} {
		c := s.MustOK("POST", keysClaim, bob.AccessToken, map[string]any{
			"one_time_keys": map[string]any{alice.UserID: map[string]string{dev: alg}}})
		got := c.Get("one_time_keys." + esc(alice.UserID) + "." + dev)
		var raw string
		for _, v := range got.Map() {
			raw = v.Raw
			if v.IsObject() {
				raw = v.Get("key").String()
			}
		}
		if raw != want {
			t.Fatalf("claim %s: %s", alg, c)
		}
	}
}

func TestKeysOneTimeKeyReupload(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	dev := keytest.NewDevice(t, alice.UserID, alice.DeviceID)
	keys := dev.OneTimeKeys(0, 3)
	s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{"device_keys": dev.DeviceKeys(), "one_time_keys": keys})
	// A retried upload (the response was lost) is fine and adds nothing.
	r := s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{"device_keys": dev.DeviceKeys(), "one_time_keys": keys})
	if r.Get("one_time_key_counts.signed_curve25519").Int() != 3 {
		t.Fatalf("retried upload: %s", r)
	}
	changed := map[string]json.RawMessage{}
	for id := range keys {
		changed[id] = dev.Sign(map[string]any{"key": keytest.NewKey(t).Public})
		break
	}
	changed["signed_curve25519:NEW"] = dev.Sign(map[string]any{"key": keytest.NewKey(t).Public})
	s.ExpectError(400, "M_INVALID_PARAM", "POST", keysUpload, alice.AccessToken, map[string]any{"one_time_keys": changed})
	// Nothing of the refused upload was kept.
	r = s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{})
	if r.Get("one_time_key_counts.signed_curve25519").Int() != 3 {
		t.Fatalf("refused upload kept keys: %s", r)
	}
}

func TestKeysClaim(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		e2eeDevice(t, s, alice, 2)
		claim := func() gjson.Result {
			return s.MustOK("POST", keysClaim, bob.AccessToken, map[string]any{"one_time_keys": map[string]any{
				alice.UserID:            map[string]string{alice.DeviceID: "signed_curve25519", "NOPE": "signed_curve25519"},
				"@carol:remote.example": map[string]string{"X": "signed_curve25519"},
			}}).JSON()
		}
		seen := map[string]bool{}
		for i := range 2 {
			r := claim()
			keys := r.Get("one_time_keys." + esc(alice.UserID) + "." + alice.DeviceID).Map()
			if len(keys) != 1 {
				t.Fatalf("claim %d: %s", i, r.Raw)
			}
			for id, k := range keys {
				if !strings.HasPrefix(id, "signed_curve25519:AAA") || seen[id] || !k.Get("signatures").Exists() {
					t.Fatalf("claim %d got %s: %s", i, id, r.Raw)
				}
				seen[id] = true
			}
			if r.Get("one_time_keys." + esc(alice.UserID) + ".NOPE").Exists() {
				t.Fatalf("unknown device: %s", r.Raw)
			}
			if !r.Get("failures." + esc("remote.example")).IsObject() {
				t.Fatalf("remote user not in failures: %s", r.Raw)
			}
		}
		// One-time keys are gone: the fallback key, again and again.
		for range 2 {
			r := claim()
			fb := r.Get("one_time_keys." + esc(alice.UserID) + "." + alice.DeviceID + "." + esc("signed_curve25519:FB"))
			if !fb.Get("fallback").Bool() {
				t.Fatalf("want the fallback key: %s", r.Raw)
			}
		}
		r := s.MustOK("POST", keysUpload, alice.AccessToken, map[string]any{})
		if r.Get("one_time_key_counts.signed_curve25519").Int() != 0 {
			t.Fatalf("counts after claims: %s", r)
		}
		s.ExpectError(400, "M_MISSING_PARAM", "POST", keysClaim, bob.AccessToken, map[string]any{})
	})
}

// TestKeysClaimParallel claims over HTTP from many clients at once: no
// key is handed out twice.
func TestKeysClaimParallel(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	const keys, claimers = 30, 40
	e2eeDevice(t, s, alice, keys)
	body, _ := json.Marshal(map[string]any{"one_time_keys": map[string]any{alice.UserID: map[string]string{alice.DeviceID: "signed_curve25519"}}})
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, claimers)
	for range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", s.URL+keysClaim, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+bob.AccessToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("claim: %d %s", resp.StatusCode, data)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for id := range gjson.GetBytes(data, "one_time_keys."+esc(alice.UserID)+"."+alice.DeviceID).Map() {
				got[id]++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for id, n := range got {
		if id != "signed_curve25519:FB" && n != 1 {
			t.Fatalf("%s handed out %d times", id, n)
		}
	}
	if len(got) != keys+1 || got["signed_curve25519:FB"] != claimers-keys {
		t.Fatalf("want %d one-time keys and %d fallbacks: %v", keys, claimers-keys, got)
	}
}

func TestDeletedDevicesLoseTheirKeys(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	phone := s.Login("alice", "pw")
	laptop := s.Login("alice", "pw")
	e2eeDevice(t, s, alice, 1)
	e2eeDevice(t, s, phone, 1)
	e2eeDevice(t, s, laptop, 1)
	devices := func() map[string]gjson.Result {
		return queryKeys(t, s, bob, alice.UserID).Get("device_keys." + esc(alice.UserID)).Map()
	}
	if n := len(devices()); n != 3 {
		t.Fatalf("want 3 devices with keys, have %d", n)
	}
	path := "/_matrix/client/v3/devices/" + phone.DeviceID
	session := expectChallenge(t, s.Request("DELETE", path, alice.AccessToken, nil), "")
	s.MustOK("DELETE", path, alice.AccessToken, map[string]any{"auth": passwordAuth("alice", "pw", session)})
	if d := devices(); len(d) != 2 || d[phone.DeviceID].Exists() {
		t.Fatalf("deleted device still has keys: %v", d)
	}
	s.MustOK("POST", "/_matrix/client/v3/logout", laptop.AccessToken, nil)
	if d := devices(); len(d) != 1 || !d[alice.DeviceID].Exists() {
		t.Fatalf("logged-out device still has keys: %v", d)
	}
	// Its one-time keys cannot be claimed either.
	r := s.MustOK("POST", keysClaim, bob.AccessToken, map[string]any{"one_time_keys": map[string]any{alice.UserID: map[string]string{laptop.DeviceID: "signed_curve25519"}}})
	if r.Get("one_time_keys." + esc(alice.UserID)).Exists() {
		t.Fatalf("claimed a logged-out device's key: %s", r)
	}
}

func TestCrossSigningUpload(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		e2eeDevice(t, s, alice, 1)
		cs := keytest.NewCrossSigning(t, alice.UserID)

		// Without a master key there is nothing to sign subkeys with.
		s.ExpectError(400, "M_MISSING_PARAM", "POST", keysSigning, alice.AccessToken, map[string]any{"self_signing_key": cs.SelfSigningKey()})
		// A subkey signed by another master key.
		other := keytest.NewCrossSigning(t, alice.UserID)
		s.ExpectError(400, "M_INVALID_SIGNATURE", "POST", keysSigning, alice.AccessToken, map[string]any{
			"master_key": cs.MasterKey(), "self_signing_key": other.SelfSigningKey()})
		s.ExpectError(400, "M_INVALID_PARAM", "POST", keysSigning, alice.AccessToken, map[string]any{
			"master_key": keytest.NewCrossSigning(t, bob.UserID).MasterKey()})

		// The first upload needs no authentication, nor does the same again.
		s.MustOK("POST", keysSigning, alice.AccessToken, cs.Upload())
		s.MustOK("POST", keysSigning, alice.AccessToken, cs.Upload())

		q := queryKeys(t, s, bob, alice.UserID)
		if q.Get("master_keys."+esc(alice.UserID)+".keys."+esc("ed25519:"+cs.Master.Public)).String() != cs.Master.Public ||
			!q.Get("self_signing_keys."+esc(alice.UserID)).Exists() || q.Get("user_signing_keys."+esc(alice.UserID)).Exists() {
			t.Fatalf("bob's view: %s", q.Raw)
		}
		q = queryKeys(t, s, alice, alice.UserID)
		if q.Get("user_signing_keys."+esc(alice.UserID)+".keys."+esc("ed25519:"+cs.UserSigning.Public)).String() != cs.UserSigning.Public {
			t.Fatalf("alice's own view lacks her user-signing key: %s", q.Raw)
		}

		// Replacing keys needs the password.
		cs2 := keytest.NewCrossSigning(t, alice.UserID)
		session := expectChallenge(t, s.Request("POST", keysSigning, alice.AccessToken, cs2.Upload()), "")
		body := cs2.Upload()
		body["auth"] = passwordAuth("alice", "wrong", session)
		expectChallenge(t, s.Request("POST", keysSigning, alice.AccessToken, body), "M_FORBIDDEN")
		body["auth"] = passwordAuth("alice", "pw", session)
		s.MustOK("POST", keysSigning, alice.AccessToken, body)
		q = queryKeys(t, s, bob, alice.UserID)
		if q.Get("master_keys."+esc(alice.UserID)+".keys."+esc("ed25519:"+cs2.Master.Public)).String() != cs2.Master.Public {
			t.Fatalf("new master key not served: %s", q.Raw)
		}
		// A new self-signing key alone also replaces a key.
		cs3 := keytest.NewCrossSigning(t, alice.UserID)
		cs3.Master = cs2.Master
		expectChallenge(t, s.Request("POST", keysSigning, alice.AccessToken, map[string]any{"self_signing_key": cs3.SelfSigningKey()}), "")

		// Cross-signing keys must not collide with device IDs.
		cs4 := keytest.NewCrossSigning(t, bob.UserID)
		s.MustOK("POST", "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "bob"},
			"password": "pw", "device_id": cs4.Master.Public,
		})
		s.ExpectError(403, "M_FORBIDDEN", "POST", keysSigning, bob.AccessToken, cs4.Upload())
	})
}

func TestSignaturesUpload(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		dev := e2eeDevice(t, s, alice, 1)
		cs := keytest.NewCrossSigning(t, alice.UserID)
		bobCS := keytest.NewCrossSigning(t, bob.UserID)
		s.MustOK("POST", keysSigning, alice.AccessToken, cs.Upload())
		s.MustOK("POST", keysSigning, bob.AccessToken, bobCS.Upload())
		sskID := "ed25519:" + cs.SelfSigning.Public
		uskID := "ed25519:" + cs.UserSigning.Public

		// Alice's self-signing key signs her device, her device her master
		// key, her user-signing key bob's master key.
		r := s.MustOK("POST", keysSignatures, alice.AccessToken, map[string]any{
			alice.UserID: map[string]any{
				alice.DeviceID:   cs.SignDevice(dev.DeviceKeys()),
				cs.Master.Public: dev.Sign(cs.MasterKey()),
			},
			bob.UserID: map[string]any{bobCS.Master.Public: cs.SignUser(bobCS.MasterKey())},
		})
		if len(r.Get("failures").Map()) != 0 {
			t.Fatalf("signatures refused: %s", r)
		}
		for _, viewer := range []*struct {
			u       *testserver.User
			seesUSK bool
		}{{alice, true}, {bob, false}, {carol, false}} {
			q := queryKeys(t, s, viewer.u, alice.UserID, bob.UserID)
			if !q.Get("device_keys." + esc(alice.UserID) + "." + alice.DeviceID + ".signatures." + esc(alice.UserID) + "." + esc(sskID)).Exists() {
				t.Fatalf("%s does not see the device's cross-signing signature: %s", viewer.u.UserID, q.Raw)
			}
			if !q.Get("master_keys." + esc(alice.UserID) + ".signatures." + esc(alice.UserID) + "." + esc(dev.KeyID())).Exists() {
				t.Fatalf("%s does not see the device's signature of the master key: %s", viewer.u.UserID, q.Raw)
			}
			// Signatures by user-signing keys are for their owner only.
			sees := q.Get("master_keys." + esc(bob.UserID) + ".signatures." + esc(alice.UserID) + "." + esc(uskID)).Exists()
			if sees != viewer.seesUSK {
				t.Fatalf("%s sees alice's signature of bob: %v: %s", viewer.u.UserID, sees, q.Raw)
			}
		}

		// Failures are per key.
		badSig, _ := sjson.SetBytes(cs.SignDevice(dev.DeviceKeys()), "signatures."+esc(alice.UserID)+"."+esc(sskID), "AAAA"+strings.Repeat("A", 82))
		mismatch, _ := sjson.SetBytes(cs.SignDevice(dev.DeviceKeys()), "algorithms", []string{"m.other"})
		r = s.MustOK("POST", keysSignatures, alice.AccessToken, map[string]any{
			alice.UserID: map[string]any{alice.DeviceID: json.RawMessage(badSig), "NOSUCHKEY": cs.SignDevice(dev.DeviceKeys())},
			carol.UserID: map[string]any{"whatever": cs.SignUser(bobCS.MasterKey())},
		})
		if r.Get("failures."+esc(alice.UserID)+"."+alice.DeviceID+".errcode").String() != "M_INVALID_SIGNATURE" ||
			r.Get("failures."+esc(alice.UserID)+".NOSUCHKEY.errcode").String() != "M_NOT_FOUND" ||
			r.Get("failures."+esc(carol.UserID)+".whatever.errcode").String() != "M_NOT_FOUND" {
			t.Fatalf("failures: %s", r)
		}
		r = s.MustOK("POST", keysSignatures, alice.AccessToken, map[string]any{alice.UserID: map[string]any{alice.DeviceID: json.RawMessage(mismatch)}})
		if r.Get("failures."+esc(alice.UserID)+"."+alice.DeviceID+".errcode").String() != "M_INVALID_PARAM" {
			t.Fatalf("changed device keys: %s", r)
		}
		// Bob cannot sign alice's master key with a key he does not have.
		r = s.MustOK("POST", keysSignatures, bob.AccessToken, map[string]any{alice.UserID: map[string]any{cs.Master.Public: cs.SignUser(cs.MasterKey())}})
		if r.Get("failures."+esc(alice.UserID)+"."+esc(cs.Master.Public)+".errcode").String() != "M_INVALID_SIGNATURE" {
			t.Fatalf("signature by a stranger's key: %s", r)
		}
	})
}

func TestKeysGuests(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	guest := &testserver.User{UserID: g.Get("user_id").String(), AccessToken: g.Get("access_token").String(), DeviceID: g.Get("device_id").String()}
	// Guests may use end-to-end encryption, but not cross-signing or backups.
	e2eeDevice(t, s, guest, 1)
	queryKeys(t, s, guest, guest.UserID)
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "POST", keysSigning, guest.AccessToken, map[string]any{})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "GET", "/_matrix/client/v3/room_keys/version", guest.AccessToken, nil)
}

func backupKey(index, forwarded int, verified bool, tag string) map[string]any {
	return map[string]any{
		"first_message_index": index, "forwarded_count": forwarded, "is_verified": verified,
		"session_data": map[string]string{"ephemeral": "e", "ciphertext": tag, "mac": "m"},
	}
}

func TestKeyBackup(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		const base = "/_matrix/client/v3/room_keys"
		room := "!room:localhost"
		sessionPath := func(version, roomID, session string) string {
			p := base + "/keys"
			if roomID != "" {
				p += "/" + url.PathEscape(roomID)
			}
			if session != "" {
				p += "/" + url.PathEscape(session)
			}
			return p + "?version=" + version
		}
		auth := map[string]any{"public_key": "abcdefg", "signatures": map[string]any{}}
		s.ExpectError(404, "M_NOT_FOUND", "GET", base+"/version", alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "POST", base+"/version", alice.AccessToken, map[string]any{"algorithm": "m.nope", "auth_data": auth})
		s.ExpectError(400, "M_MISSING_PARAM", "POST", base+"/version", alice.AccessToken, map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2"})
		v1 := s.MustOK("POST", base+"/version", alice.AccessToken, map[string]any{
			"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": auth}).Get("version").String()
		r := s.MustOK("GET", base+"/version", alice.AccessToken, nil)
		if r.Get("version").String() != v1 || r.Get("count").Int() != 0 || r.Get("etag").String() == "" ||
			r.Get("auth_data.public_key").String() != "abcdefg" || r.Get("algorithm").String() != "m.megolm_backup.v1.curve25519-aes-sha2" {
			t.Fatalf("current version: %s", r)
		}
		etag0 := r.Get("etag").String()
		// Another user's backup does not exist for bob.
		s.ExpectError(404, "M_NOT_FOUND", "GET", base+"/version/"+v1, bob.AccessToken, nil)

		put := func(session string, key map[string]any) gjson.Result {
			return s.MustOK("PUT", sessionPath(v1, room, session), alice.AccessToken, key).JSON()
		}
		getCiphertext := func(session string) string {
			return s.MustOK("GET", sessionPath(v1, room, session), alice.AccessToken, nil).Get("session_data.ciphertext").String()
		}
		p := put("S1", backupKey(5, 1, false, "first"))
		if p.Get("count").Int() != 1 || p.Get("etag").String() == etag0 {
			t.Fatalf("first put: %s", p.Raw)
		}
		etag1 := p.Get("etag").String()
		// A worse key changes nothing, the etag included.
		if p := put("S1", backupKey(6, 0, false, "later index")); p.Get("etag").String() != etag1 || getCiphertext("S1") != "first" {
			t.Fatalf("higher first_message_index replaced the key: %s", p.Raw)
		}
		put("S1", backupKey(5, 2, false, "more forwarded"))
		if getCiphertext("S1") != "first" {
			t.Fatal("higher forwarded_count replaced the key")
		}
		put("S1", backupKey(5, 0, false, "fewer forwards"))
		if getCiphertext("S1") != "fewer forwards" {
			t.Fatal("lower forwarded_count did not replace the key")
		}
		put("S1", backupKey(9, 9, true, "verified"))
		if getCiphertext("S1") != "verified" {
			t.Fatal("a verified key did not replace an unverified one")
		}
		put("S1", backupKey(0, 0, false, "unverified"))
		if getCiphertext("S1") != "verified" {
			t.Fatal("an unverified key replaced a verified one")
		}
		put("S1", backupKey(3, 9, true, "verified, lower index"))
		if getCiphertext("S1") != "verified, lower index" {
			t.Fatal("lower first_message_index did not replace the key")
		}

		// Whole rooms and whole backups at once.
		r = s.MustOK("PUT", sessionPath(v1, room, ""), alice.AccessToken, map[string]any{"sessions": map[string]any{"S2": backupKey(0, 0, false, "s2")}})
		if r.Get("count").Int() != 2 {
			t.Fatalf("room put: %s", r)
		}
		r = s.MustOK("PUT", sessionPath(v1, "", ""), alice.AccessToken, map[string]any{"rooms": map[string]any{
			"!other:localhost": map[string]any{"sessions": map[string]any{"S3/with+slash": backupKey(0, 0, false, "s3")}}}})
		if r.Get("count").Int() != 3 {
			t.Fatalf("rooms put: %s", r)
		}
		all := s.MustOK("GET", sessionPath(v1, "", ""), alice.AccessToken, nil)
		if all.Get("rooms."+esc(room)+".sessions.S2.session_data.ciphertext").String() != "s2" ||
			all.Get("rooms."+esc("!other:localhost")+".sessions."+esc("S3/with+slash")+".first_message_index").Int() != 0 {
			t.Fatalf("all keys: %s", all)
		}
		if getCiphertextPath := s.MustOK("GET", sessionPath(v1, "!other:localhost", "S3/with+slash"), alice.AccessToken, nil); getCiphertextPath.Get("session_data.ciphertext").String() != "s3" {
			t.Fatalf("session with a slash: %s", getCiphertextPath)
		}
		if r := s.MustOK("GET", sessionPath(v1, "!empty:localhost", ""), alice.AccessToken, nil); r.Get("sessions").Raw != "{}" {
			t.Fatalf("room without keys: %s", r)
		}
		s.ExpectError(404, "M_NOT_FOUND", "GET", sessionPath(v1, room, "NOPE"), alice.AccessToken, nil)
		s.ExpectError(400, "M_MISSING_PARAM", "GET", base+"/keys", alice.AccessToken, nil)
		s.ExpectError(400, "M_MISSING_PARAM", "PUT", sessionPath(v1, room, "S4"), alice.AccessToken, map[string]any{"first_message_index": 0})
		s.ExpectError(404, "M_NOT_FOUND", "GET", sessionPath("99", "", ""), alice.AccessToken, nil)

		// A newer version takes the writes.
		v2 := s.MustOK("POST", base+"/version", alice.AccessToken, map[string]any{
			"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": auth}).Get("version").String()
		if v2 == v1 {
			t.Fatal("a new backup got the old version")
		}
		r = s.ExpectError(403, "M_WRONG_ROOM_KEYS_VERSION", "PUT", sessionPath(v1, room, "S1"), alice.AccessToken, backupKey(0, 0, true, "x"))
		if r.Get("current_version").String() != v2 {
			t.Fatalf("wrong version error: %s", r)
		}
		s.ExpectError(403, "M_WRONG_ROOM_KEYS_VERSION", "DELETE", sessionPath(v1, room, "S1"), alice.AccessToken, nil)
		if r := s.MustOK("GET", base+"/version/"+v1, alice.AccessToken, nil); r.Get("count").Int() != 3 {
			t.Fatalf("old version: %s", r)
		}
		if r := s.MustOK("GET", base+"/version", alice.AccessToken, nil); r.Get("version").String() != v2 || r.Get("count").Int() != 0 {
			t.Fatalf("current version: %s", r)
		}

		// Updating: only auth_data changes.
		newAuth := map[string]any{"public_key": "hijklmn"}
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", base+"/version/"+v2, alice.AccessToken, map[string]any{"algorithm": "m.other", "auth_data": newAuth})
		s.ExpectError(400, "M_INVALID_PARAM", "PUT", base+"/version/"+v2, alice.AccessToken, map[string]any{
			"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": newAuth, "version": v1})
		s.ExpectError(404, "M_NOT_FOUND", "PUT", base+"/version/77", alice.AccessToken, map[string]any{
			"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": newAuth})
		s.MustOK("PUT", base+"/version/"+v2, alice.AccessToken, map[string]any{
			"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": newAuth, "version": v2})
		if r := s.MustOK("GET", base+"/version/"+v2, alice.AccessToken, nil); r.Get("auth_data.public_key").String() != "hijklmn" {
			t.Fatalf("updated version: %s", r)
		}

		// Deleting keys.
		s.MustOK("PUT", sessionPath(v2, room, "A"), alice.AccessToken, backupKey(0, 0, false, "a"))
		s.MustOK("PUT", sessionPath(v2, room, "B"), alice.AccessToken, backupKey(0, 0, false, "b"))
		s.MustOK("PUT", sessionPath(v2, "!r2:localhost", "C"), alice.AccessToken, backupKey(0, 0, false, "c"))
		if r := s.MustOK("DELETE", sessionPath(v2, room, "A"), alice.AccessToken, nil); r.Get("count").Int() != 2 {
			t.Fatalf("delete session: %s", r)
		}
		if r := s.MustOK("DELETE", sessionPath(v2, room, ""), alice.AccessToken, nil); r.Get("count").Int() != 1 {
			t.Fatalf("delete room: %s", r)
		}
		if r := s.MustOK("DELETE", sessionPath(v2, "", ""), alice.AccessToken, nil); r.Get("count").Int() != 0 {
			t.Fatalf("delete all: %s", r)
		}

		// Deleting a version: it is gone, deleting it again is fine, and
		// the newest remaining version is current again.
		s.MustOK("DELETE", base+"/version/"+v2, alice.AccessToken, nil)
		s.MustOK("DELETE", base+"/version/"+v2, alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "DELETE", base+"/version/12345", alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", base+"/version/"+v2, alice.AccessToken, nil)
		if r := s.MustOK("GET", base+"/version", alice.AccessToken, nil); r.Get("version").String() != v1 {
			t.Fatalf("after deleting the newest version: %s", r)
		}
	})
}
