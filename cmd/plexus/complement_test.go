package main

import (
	"bufio"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// writeCA makes a CA like Complement's: an RSA key in PKCS#1 PEM and a
// self-signed CA certificate with EKU serverAuth.
func writeCA(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Complement CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func TestComplementStartServesTLSSignedByTheCA(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	os.MkdirAll(caDir, 0o700)
	pool := writeCA(t, caDir)

	cmd := exec.Command(binary, "complement-start", "--data-dir", filepath.Join(dir, "data"), "--ca-dir", caDir)
	cmd.Env = append(os.Environ(), "SERVER_NAME=hs1", "PLEXUS_LISTEN=127.0.0.1:0", "PLEXUS_TLS_LISTEN=127.0.0.1:0", "TMPDIR="+filepath.Join(dir, "tmp"))
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	httpsLine := regexp.MustCompile(`API: https://(\S+)`)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := httpsLine.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	var addr string
	select {
	case addr = <-found:
	case <-time.After(30 * time.Second):
		t.Fatal("complement-start did not start")
	}
	// A peer that trusts the CA and asks for hs1 accepts the certificate.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "hs1"}}}
	resp, err := client.Get("https://" + addr + "/_matrix/client/versions")
	if err != nil {
		t.Fatalf("TLS with the Complement CA: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("versions over TLS: %d", resp.StatusCode)
	}
}

func TestComplementStartNeedsServerName(t *testing.T) {
	cmd := exec.Command(binary, "complement-start", "--data-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "SERVER_NAME=")
	if out, err := cmd.CombinedOutput(); err == nil || !regexp.MustCompile("SERVER_NAME").Match(out) {
		t.Fatalf("want an error about SERVER_NAME: %v %s", err, out)
	}
}
