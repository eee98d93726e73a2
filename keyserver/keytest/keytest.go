// Package keytest builds signed end-to-end encryption keys for tests: a
// device's identity keys, one-time and fallback keys, and cross-signing
// keys, all signed with real ed25519 keys over canonical JSON.
//
//	dev := keytest.NewDevice(t, "@alice:hs", "PHONE")
//	body := map[string]any{"device_keys": dev.DeviceKeys(), "one_time_keys": dev.OneTimeKeys(0, 5)}
//	cs := keytest.NewCrossSigning(t, "@alice:hs")
//	signed := cs.SignDevice(dev.DeviceKeys())
package keytest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
)

// Key is an ed25519 key pair.
type Key struct {
	Public  string // unpadded base64
	private ed25519.PrivateKey
}

// NewKey makes a random key pair.
func NewKey(t testing.TB) Key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return Key{Public: base64.RawStdEncoding.EncodeToString(pub), private: priv}
}

// Sign returns obj (a JSON object, as bytes or anything json.Marshal
// takes) with userID's signature by this key under keyID added.
func (k Key) Sign(t testing.TB, obj any, userID, keyID string) json.RawMessage {
	t.Helper()
	raw, ok := obj.(json.RawMessage)
	if !ok {
		var err error
		if raw, err = json.Marshal(obj); err != nil {
			t.Fatal(err)
		}
	}
	signed, err := gomatrixserverlib.SignJSON(userID, gomatrixserverlib.KeyID(keyID), k.private, raw)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return signed
}

// Device is a device's identity keys.
type Device struct {
	UserID, DeviceID string
	Ed25519          Key
	Curve25519       string
	t                testing.TB
}

// NewDevice makes a device with fresh keys.
func NewDevice(t testing.TB, userID, deviceID string) *Device {
	t.Helper()
	return &Device{UserID: userID, DeviceID: deviceID, Ed25519: NewKey(t), Curve25519: NewKey(t).Public, t: t}
}

// KeyID is the device's ed25519 key ID.
func (d *Device) KeyID() string { return "ed25519:" + d.DeviceID }

// Sign signs obj with the device's key.
func (d *Device) Sign(obj any) json.RawMessage { return d.Ed25519.Sign(d.t, obj, d.UserID, d.KeyID()) }

// DeviceKeys is the device_keys object, signed by the device.
func (d *Device) DeviceKeys() json.RawMessage {
	return d.Sign(map[string]any{
		"user_id": d.UserID, "device_id": d.DeviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{
			"curve25519:" + d.DeviceID: d.Curve25519,
			d.KeyID():                  d.Ed25519.Public,
		},
	})
}

// OneTimeKeys are n signed_curve25519 keys with IDs AAA<from>... signed
// by the device.
func (d *Device) OneTimeKeys(from, n int) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for i := from; i < from+n; i++ {
		out[fmt.Sprintf("signed_curve25519:AAA%d", i)] = d.Sign(map[string]any{"key": NewKey(d.t).Public})
	}
	return out
}

// FallbackKey is one signed fallback key with the given ID.
func (d *Device) FallbackKey(id string) map[string]json.RawMessage {
	return map[string]json.RawMessage{
		"signed_curve25519:" + id: d.Sign(map[string]any{"key": NewKey(d.t).Public, "fallback": true}),
	}
}

// CrossSigning is a user's three cross-signing keys.
type CrossSigning struct {
	UserID                           string
	Master, SelfSigning, UserSigning Key
	t                                testing.TB
}

// NewCrossSigning makes fresh cross-signing keys.
func NewCrossSigning(t testing.TB, userID string) *CrossSigning {
	t.Helper()
	return &CrossSigning{UserID: userID, Master: NewKey(t), SelfSigning: NewKey(t), UserSigning: NewKey(t), t: t}
}

func (c *CrossSigning) key(k Key, usage string) map[string]any {
	return map[string]any{
		"user_id": c.UserID, "usage": []string{usage},
		"keys": map[string]string{"ed25519:" + k.Public: k.Public},
	}
}

// MasterKey is the master key object (unsigned).
func (c *CrossSigning) MasterKey() json.RawMessage {
	raw, _ := json.Marshal(c.key(c.Master, "master"))
	return raw
}

// SelfSigningKey is the self-signing key object, signed by the master key.
func (c *CrossSigning) SelfSigningKey() json.RawMessage {
	return c.Master.Sign(c.t, c.key(c.SelfSigning, "self_signing"), c.UserID, "ed25519:"+c.Master.Public)
}

// UserSigningKey is the user-signing key object, signed by the master key.
func (c *CrossSigning) UserSigningKey() json.RawMessage {
	return c.Master.Sign(c.t, c.key(c.UserSigning, "user_signing"), c.UserID, "ed25519:"+c.Master.Public)
}

// Upload is the body of /keys/device_signing/upload with all three keys.
func (c *CrossSigning) Upload() map[string]any {
	return map[string]any{
		"master_key": c.MasterKey(), "self_signing_key": c.SelfSigningKey(), "user_signing_key": c.UserSigningKey(),
	}
}

// SignDevice signs a device's keys with the self-signing key.
func (c *CrossSigning) SignDevice(deviceKeys json.RawMessage) json.RawMessage {
	return c.SelfSigning.Sign(c.t, deviceKeys, c.UserID, "ed25519:"+c.SelfSigning.Public)
}

// SignUser signs another user's master key with the user-signing key.
func (c *CrossSigning) SignUser(masterKey json.RawMessage) json.RawMessage {
	return c.UserSigning.Sign(c.t, masterKey, c.UserID, "ed25519:"+c.UserSigning.Public)
}
