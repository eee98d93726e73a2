package testserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority made for one test: servers started with
// NewTLS get certificates it signed and trust it for outbound federation.
type CA struct {
	// CertFile is the CA certificate in PEM.
	CertFile string
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
	pool     *x509.CertPool
}

// NewCA makes a CA whose files live in a temporary folder.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Plexus test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := &CA{CertFile: filepath.Join(dir, "ca.crt"), cert: cert, key: key, dir: dir, pool: x509.NewCertPool()}
	ca.pool.AddCert(cert)
	writePEM(t, ca.CertFile, "CERTIFICATE", der)
	return ca
}

// Issue makes a key and a certificate signed by the CA for host (a DNS
// name or an IP address) and returns their PEM files.
func (ca *CA) Issue(t testing.TB, host string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(ca.dir, serial.String())
	writePEM(t, base+".crt", "CERTIFICATE", der)
	writePEM(t, base+".key", "EC PRIVATE KEY", keyDER)
	return base + ".crt", base + ".key"
}

// Pool is a certificate pool trusting only the CA.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// HTTPClient is an HTTP client trusting only the CA.
func (ca *CA) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}},
	}
}

func writePEM(t testing.TB, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// NewTLS starts a server that federates over TLS on loopback: its TLS
// port is opened first, so that its server name can be
// "127.0.0.1:<TLS port>", which other servers reach directly (an IP
// literal with a port needs no discovery). It serves a certificate for
// 127.0.0.1 signed by ca and trusts ca for outbound TLS. The plain HTTP
// listener (URL) is still there for client requests. opts run after these
// settings, so a test may change them (clear Listen.TLSCert and TLSKey for
// a self-signed certificate, set Federation.InsecureSkipVerify, ...).
func NewTLS(t testing.TB, ca *CA, opts ...Option) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("open TLS port: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := ln.Addr().String()
	cfg := baseConfig(t, "")
	cfg.Database = filepath.Join(cfg.DataDir, "plexus.db")
	cfg.ServerName = addr
	cfg.Listen.TLS = addr
	cfg.Listen.TLSCert, cfg.Listen.TLSKey = ca.Issue(t, "127.0.0.1")
	cfg.Federation.CAFile = ca.CertFile
	return start(t, cfg, ln, opts...)
}

// NewFederated starts n servers with NewTLS under one new CA: each trusts
// the others' certificates and can reach them by server name.
func NewFederated(t testing.TB, n int, opts ...Option) []*Server {
	t.Helper()
	ca := NewCA(t)
	servers := make([]*Server, n)
	for i := range servers {
		servers[i] = NewTLS(t, ca, opts...)
	}
	return servers
}

// ServerName is the server's name, the part after the colon in its users'
// IDs.
func (s *Server) ServerName() string { return s.Config.ServerName }
