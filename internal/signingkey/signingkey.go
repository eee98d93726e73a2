// Package signingkey reads and writes the server's ed25519 signing key in
// the common one-line format "ed25519 <key id> <unpadded base64 seed>".
package signingkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Key is a named ed25519 signing key.
type Key struct {
	ID         string // such as "ed25519:a_Xy12"
	PrivateKey ed25519.PrivateKey
}

// Generate makes a new key with a random version.
func Generate() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	// Key versions may hold only letters, digits and underscores.
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	var v [4]byte
	if _, err := rand.Read(v[:]); err != nil {
		return nil, err
	}
	version := "a_"
	for _, b := range v {
		version += string(alphabet[int(b)%len(alphabet)])
	}
	return &Key{ID: "ed25519:" + version, PrivateKey: priv}, nil
}

// Encode renders the key in the one-line file format.
func (k *Key) Encode() []byte {
	version := strings.TrimPrefix(k.ID, "ed25519:")
	seed := base64.RawStdEncoding.EncodeToString(k.PrivateKey.Seed())
	return []byte(fmt.Sprintf("ed25519 %s %s\n", version, seed))
}

// Parse reads the first key in the file format.
func Parse(data []byte) (*Key, error) {
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 3 || f[0] != "ed25519" {
			return nil, errors.New("signing key: want a line 'ed25519 <version> <base64 seed>'")
		}
		seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(f[2], "="))
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, errors.New("signing key: the seed is not 32 bytes of base64")
		}
		for _, r := range f[1] {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
				return nil, fmt.Errorf("signing key: version %q may hold only letters, digits and _", f[1])
			}
		}
		return &Key{ID: "ed25519:" + f[1], PrivateKey: ed25519.NewKeyFromSeed(seed)}, nil
	}
	return nil, errors.New("signing key: file holds no key")
}

// LoadOrGenerate reads the key at path, or makes and saves one (mode 0600)
// when the file does not exist. created says which happened.
func LoadOrGenerate(path string) (key *Key, created bool, err error) {
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := Parse(data)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", path, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	key, err = Generate()
	if err != nil {
		return nil, false, err
	}
	if err := Write(path, key); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// Write saves key at path, refusing to overwrite an existing file.
func Write(path string, key *Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(key.Encode()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
