package config

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
)

func TestSelfSignedCertificateIsMadeOnceAndReused(t *testing.T) {
	cfg := Default("127.0.0.1:8448")
	cfg.DataDir = t.TempDir()
	cfg.Listen.TLS = "127.0.0.1:8448"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("listen.tls without a certificate should validate: %v", err)
	}
	cert, created, err := cfg.TLSCertificate()
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v", created, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatalf("certificate does not cover the server's IP: %v", err)
	}
	st, err := os.Stat(filepath.Join(cfg.DataDir, SelfSignedKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	again, created, err := cfg.TLSCertificate()
	if err != nil || created || !bytes.Equal(again.Certificate[0], cert.Certificate[0]) {
		t.Fatalf("second call should reuse the certificate: created=%v err=%v", created, err)
	}

	// A new server name gets a new certificate.
	cfg.ServerName = "hs.example.org"
	renamed, created, err := cfg.TLSCertificate()
	if err != nil || !created {
		t.Fatalf("after rename: created=%v err=%v", created, err)
	}
	leaf, _ = x509.ParseCertificate(renamed.Certificate[0])
	if err := leaf.VerifyHostname("hs.example.org"); err != nil {
		t.Fatalf("renamed certificate: %v", err)
	}
}

func TestConfiguredCertificateFilesAreLoaded(t *testing.T) {
	dir := t.TempDir()
	if err := WriteSelfSigned(filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key"), "example.org", selfSignedLifetime); err != nil {
		t.Fatal(err)
	}
	cfg := Default("other.example")
	cfg.DataDir = dir
	cfg.Listen.TLSCert, cfg.Listen.TLSKey = "a.crt", "a.key"
	cert, created, err := cfg.TLSCertificate()
	if err != nil || created {
		t.Fatalf("created=%v err=%v", created, err)
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if leaf.Subject.CommonName != "example.org" {
		t.Fatalf("loaded %q", leaf.Subject.CommonName)
	}
	cfg.Listen.TLSKey = "missing.key"
	if _, _, err := cfg.TLSCertificate(); err == nil {
		t.Fatal("a missing key file should fail")
	}
	if _, err := os.Stat(filepath.Join(dir, SelfSignedCertFile)); !os.IsNotExist(err) {
		t.Fatal("configured files must not fall back to a self-signed certificate")
	}
}
