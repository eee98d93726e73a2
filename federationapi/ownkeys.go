package federationapi

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/signingkey"
)

// ownKeys is this server's signing key and the keys it retired: what
// /_matrix/key/v2/server publishes, and what the key ring answers for our
// own name without asking anyone.
type ownKeys struct {
	name     spec.ServerName
	keyID    gomatrixserverlib.KeyID
	private  ed25519.PrivateKey
	public   ed25519.PublicKey
	old      map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey
	validity time.Duration

	mu        sync.Mutex
	signed    []byte    // the last signed response
	signedAt  time.Time // when it was made
	signedTTL time.Duration
}

func newOwnKeys(name spec.ServerName, key *signingkey.Key, validity time.Duration, old []config.OldSigningKey) (*ownKeys, error) {
	k := &ownKeys{
		name:     name,
		keyID:    gomatrixserverlib.KeyID(key.ID),
		private:  key.PrivateKey,
		public:   key.PrivateKey.Public().(ed25519.PublicKey),
		old:      make(map[gomatrixserverlib.KeyID]gomatrixserverlib.OldVerifyKey, len(old)),
		validity: validity,
		// Signing is cheap, but a key server under load need not sign the
		// same answer thousands of times; valid_until_ts moves on hourly.
		signedTTL: min(time.Hour, validity/2),
	}
	for _, o := range old {
		if gomatrixserverlib.KeyID(o.KeyID) == k.keyID {
			return nil, fmt.Errorf("federation.old_signing_keys: %s is the current signing key", o.KeyID)
		}
		pub, err := config.DecodePublicKey(o.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("federation.old_signing_keys %s: %w", o.KeyID, err)
		}
		k.old[gomatrixserverlib.KeyID(o.KeyID)] = gomatrixserverlib.OldVerifyKey{
			VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(pub)},
			ExpiredTS: spec.Timestamp(o.ExpiredTS),
		}
	}
	return k, nil
}

// response returns our key response, signed by our key.
func (k *ownKeys) response(now time.Time) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.signed != nil && now.Sub(k.signedAt) < k.signedTTL && !now.Before(k.signedAt) {
		return k.signed, nil
	}
	fields := gomatrixserverlib.ServerKeyFields{
		ServerName:    k.name,
		VerifyKeys:    map[gomatrixserverlib.KeyID]gomatrixserverlib.VerifyKey{k.keyID: {Key: spec.Base64Bytes(k.public)}},
		ValidUntilTS:  spec.AsTimestamp(now.Add(k.validity)),
		OldVerifyKeys: k.old,
	}
	raw, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	signed, err := gomatrixserverlib.SignJSON(string(k.name), k.keyID, k.private, raw)
	if err != nil {
		return nil, err
	}
	k.signed, k.signedAt = signed, now
	return signed, nil
}

// sign adds our signature to a JSON object.
func (k *ownKeys) sign(message []byte) ([]byte, error) {
	return gomatrixserverlib.SignJSON(string(k.name), k.keyID, k.private, message)
}

// lookup answers a key ring request for one of our own keys.
func (k *ownKeys) lookup(id gomatrixserverlib.KeyID) (gomatrixserverlib.PublicKeyLookupResult, bool) {
	if id == k.keyID {
		return gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(k.public)},
			ExpiredTS: gomatrixserverlib.PublicKeyNotExpired,
			// Our current key is valid for as long as we hold it.
			ValidUntilTS: spec.AsTimestamp(time.Now().Add(k.validity)),
		}, true
	}
	if o, ok := k.old[id]; ok {
		return gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey:    o.VerifyKey,
			ExpiredTS:    o.ExpiredTS,
			ValidUntilTS: gomatrixserverlib.PublicKeyNotValid,
		}, true
	}
	return gomatrixserverlib.PublicKeyLookupResult{}, false
}
