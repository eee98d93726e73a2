package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// complementStart runs Plexus the way the Complement test suite expects of
// a homeserver image: server name from SERVER_NAME, client API on :8008,
// federation over TLS on :8448 with a certificate signed at every start by
// the CA Complement copies in, open registration, shared secret
// "complement", no rate limits. Settings come in through the same
// environment variables as always, so a test can still override them.
func complementStart(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plexus complement-start", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "/data", "data folder")
	caDir := fs.String("ca-dir", "/complement/ca", "folder holding Complement's ca.crt and ca.key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	name := os.Getenv("SERVER_NAME")
	if name == "" {
		return errors.New("SERVER_NAME is not set")
	}
	if err := ensureTempDir(); err != nil {
		return err
	}
	certPath := filepath.Join(*dataDir, "tls.crt")
	keyPath := filepath.Join(*dataDir, "tls.key")
	if err := issueCertificate(filepath.Join(*caDir, "ca.crt"), filepath.Join(*caDir, "ca.key"), name, certPath, keyPath); err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	defaults := map[string]string{
		"PLEXUS_SERVER_NAME":                name,
		"PLEXUS_LISTEN":                     "0.0.0.0:8008",
		"PLEXUS_TLS_LISTEN":                 "0.0.0.0:8448",
		"PLEXUS_TLS_CERT":                   certPath,
		"PLEXUS_TLS_KEY":                    keyPath,
		"PLEXUS_FEDERATION_CA":              filepath.Join(*caDir, "ca.crt"),
		"PLEXUS_REGISTRATION_OPEN":          "true",
		"PLEXUS_REGISTRATION_SHARED_SECRET": "complement",
		"PLEXUS_RATE_LIMIT":                 "off",
		"PLEXUS_BCRYPT_COST":                "4",
		"PLEXUS_LOG_LEVEL":                  "info",
		// No internet: fetch keys from each origin, never from matrix.org.
		"PLEXUS_TRUSTED_KEY_SERVERS": "",
	}
	for k, v := range defaults {
		if _, set := os.LookupEnv(k); !set {
			os.Setenv(k, v)
		}
	}
	return runServer([]string{"--data-dir", *dataDir}, stdout, stderr)
}

// issueCertificate makes a new key and a certificate for name signed by
// the CA, valid for a week: the CA changes with every test package, so an
// old certificate is never reused.
func issueCertificate(caCertPath, caKeyPath, name, certPath, keyPath string) error {
	caCertPEM, err := os.ReadFile(caCertPath)
	if err != nil {
		return err
	}
	caKeyPEM, err := os.ReadFile(caKeyPath)
	if err != nil {
		return err
	}
	certBlock, _ := pem.Decode(caCertPEM)
	keyBlock, _ := pem.Decode(caKeyPEM)
	if certBlock == nil || keyBlock == nil {
		return errors.New("CA certificate or key is not PEM")
	}
	caCert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return err
	}
	caKey, err := parsePrivateKey(keyBlock.Bytes)
	if err != nil {
		return err
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
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
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
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
}

func parsePrivateKey(der []byte) (any, error) {
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return k, nil
	}
	return x509.ParseECPrivateKey(der)
}
