package keyserver

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sort"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// signatures is the "signatures" object of signed JSON: user ID -> key
// ID -> unpadded base64 signature.
type signatures map[string]map[string]string

// decodeKey decodes an unpadded base64 ed25519 public key.
func decodeKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimRight(s, "=")
	b, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		if b, err = base64.RawURLEncoding.DecodeString(s); err != nil {
			return nil, errors.New("not base64")
		}
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, errors.New("not a 32-byte key")
	}
	return ed25519.PublicKey(b), nil
}

// verify checks that userID's key keyID ("ed25519:...") with public key
// pub signed obj.
func verify(obj []byte, userID, keyID, pub string) error {
	key, err := decodeKey(pub)
	if err != nil {
		return err
	}
	return gomatrixserverlib.VerifyJSON(userID, gomatrixserverlib.KeyID(keyID), key, obj)
}

// canonicalObject parses obj as a JSON object and returns its canonical
// form without "unsigned": the form keys are stored in.
func canonicalObject(obj []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	delete(m, "unsigned")
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.CanonicalJSON(raw)
}

// signedPart is the canonical JSON of obj without "signatures" and
// "unsigned": what signatures cover, and what must match when a signed
// copy of a stored key is uploaded.
func signedPart(obj []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	delete(m, "unsigned")
	delete(m, "signatures")
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.CanonicalJSON(raw)
}

// sameSignedPart reports whether a and b are the same object apart from
// signatures and unsigned data.
func sameSignedPart(a, b []byte) bool {
	pa, err1 := signedPart(a)
	pb, err2 := signedPart(b)
	return err1 == nil && err2 == nil && bytes.Equal(pa, pb)
}

// signaturesOf reads the signatures of a JSON object.
func signaturesOf(obj []byte) signatures {
	var v struct {
		Signatures signatures `json:"signatures"`
	}
	_ = json.Unmarshal(obj, &v)
	return v.Signatures
}

// withSignatures returns obj (canonical) with extra signatures merged
// into its "signatures" and, when unsigned is not nil, that "unsigned".
func withSignatures(obj []byte, extra signatures, unsigned map[string]any) json.RawMessage {
	if len(extra) == 0 && unsigned == nil {
		return json.RawMessage(obj)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return json.RawMessage(obj)
	}
	if len(extra) > 0 {
		sigs := signaturesOf(obj)
		if sigs == nil {
			sigs = signatures{}
		}
		for user, keys := range extra {
			if sigs[user] == nil {
				sigs[user] = map[string]string{}
			}
			for id, sig := range keys {
				sigs[user][id] = sig
			}
		}
		m["signatures"], _ = json.Marshal(sigs)
	}
	if unsigned != nil {
		m["unsigned"], _ = json.Marshal(unsigned)
	}
	out, err := json.Marshal(m)
	if err != nil {
		return json.RawMessage(obj)
	}
	return out
}

// crossSigningKey is a cross-signing key object.
type crossSigningKey struct {
	UserID string            `json:"user_id"`
	Usage  []string          `json:"usage"`
	Keys   map[string]string `json:"keys"`
}

// parseCrossSigningKey checks a cross-signing key of userID for purpose
// and returns its public key and canonical JSON.
func parseCrossSigningKey(raw json.RawMessage, userID, purpose string) (pub string, canonical []byte, err error) {
	canonical, err = canonicalObject(raw)
	if err != nil {
		return "", nil, newErr(CodeInvalidParam, "%s key: %v", purpose, err)
	}
	var k crossSigningKey
	if err := json.Unmarshal(canonical, &k); err != nil {
		return "", nil, newErr(CodeInvalidParam, "%s key: %v", purpose, err)
	}
	if k.UserID != userID {
		return "", nil, newErr(CodeInvalidParam, "%s key: user_id must be %s", purpose, userID)
	}
	found := false
	for _, u := range k.Usage {
		found = found || u == purpose
	}
	if !found {
		return "", nil, newErr(CodeInvalidParam, "%s key: usage must include %q", purpose, purpose)
	}
	if len(k.Keys) != 1 {
		return "", nil, newErr(CodeInvalidParam, "%s key: keys must hold exactly one key", purpose)
	}
	for id, value := range k.Keys {
		alg, name, _ := strings.Cut(id, ":")
		if alg != "ed25519" || name != value {
			return "", nil, newErr(CodeInvalidParam, "%s key: the key ID must be ed25519:<public key>", purpose)
		}
		if _, err := decodeKey(value); err != nil {
			return "", nil, newErr(CodeInvalidParam, "%s key: %v", purpose, err)
		}
		pub = value
	}
	return pub, canonical, nil
}

// sortedKeys returns a map's keys in order, for deterministic work.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
