package signingkey

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrGenerateReusesTheKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "signing.key")
	k1, created, err := LoadOrGenerate(path)
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v", created, err)
	}
	k2, created, err := LoadOrGenerate(path)
	if err != nil || created {
		t.Fatalf("second call: created=%v err=%v", created, err)
	}
	if k1.ID != k2.ID || !bytes.Equal(k1.PrivateKey, k2.PrivateKey) {
		t.Fatal("the reloaded key differs")
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if err := Write(path, k1); err == nil {
		t.Fatal("Write overwrote an existing key")
	}
}

func TestParse(t *testing.T) {
	// A key in the format SyTest and Synapse write.
	k, err := Parse([]byte("ed25519 sytest0 tDMMZ1hQK6m5ScchUHbMS2uyZHA40DUsg3pSODFhWIs\n"))
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != "ed25519:sytest0" || len(k.PrivateKey) != 64 {
		t.Fatalf("parsed %q", k.ID)
	}
	for _, bad := range []string{"", "rsa x abc", "ed25519 a_b", "ed25519 a-b AAAA", "ed25519 a_b notbase64!"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestGeneratedKeysAlwaysParse(t *testing.T) {
	for i := 0; i < 2000; i++ {
		k, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(k.Encode()); err != nil {
			t.Fatalf("generated key %s does not parse: %v", k.ID, err)
		}
	}
}
