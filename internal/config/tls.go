package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The files in the data folder holding the self-signed certificate made
// when listen.tls is set without tls_cert and tls_key.
const (
	SelfSignedCertFile = "tls-selfsigned.crt"
	SelfSignedKeyFile  = "tls-selfsigned.key"
)

// selfSignedLifetime is how long a generated certificate is valid; it is
// made again when less than selfSignedRenewBefore remains.
const (
	selfSignedLifetime    = 365 * 24 * time.Hour
	selfSignedRenewBefore = 30 * 24 * time.Hour
)

// TLSCertificate returns the certificate for the TLS listener: the files
// listen.tls_cert and listen.tls_key name or, when both are empty, a
// self-signed certificate for the server name's host, made in the data
// folder on first use and reused until it nears its expiry or the server
// name changes. created says that a new certificate was made.
func (c *Config) TLSCertificate() (cert tls.Certificate, created bool, err error) {
	if c.Listen.TLSCert != "" || c.Listen.TLSKey != "" {
		cert, err = tls.LoadX509KeyPair(c.Path(c.Listen.TLSCert), c.Path(c.Listen.TLSKey))
		if err != nil {
			return cert, false, fmt.Errorf("listen.tls_cert/tls_key: %w", err)
		}
		return cert, false, nil
	}
	certPath, keyPath := c.Path(SelfSignedCertFile), c.Path(SelfSignedKeyFile)
	host := serverHost(c.ServerName)
	if cert, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && selfSignedUsable(cert, host) {
		return cert, false, nil
	}
	if err := WriteSelfSigned(certPath, keyPath, host, selfSignedLifetime); err != nil {
		return cert, false, fmt.Errorf("self-signed TLS certificate: %w", err)
	}
	cert, err = tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return cert, false, fmt.Errorf("self-signed TLS certificate: %w", err)
	}
	return cert, true, nil
}

// serverHost is the host part of a server name, without brackets.
func serverHost(serverName string) string {
	host := serverName
	if h, _, err := net.SplitHostPort(serverName); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

func selfSignedUsable(cert tls.Certificate, host string) bool {
	if len(cert.Certificate) == 0 {
		return false
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return false
	}
	return time.Until(leaf.NotAfter) > selfSignedRenewBefore && leaf.VerifyHostname(host) == nil
}

// WriteSelfSigned makes a new ECDSA key and a self-signed certificate for
// host (a DNS name or an IP address) valid for lifetime, and writes them
// as PEM files (mode 0600), replacing any there.
func WriteSelfSigned(certPath, keyPath, host string, lifetime time.Duration) error {
	if host == "" {
		return errors.New("no host name for the certificate")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(lifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certPath), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
		return err
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})); err != nil {
		return err
	}
	return writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it into place, so a crash never leaves half a file.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}
