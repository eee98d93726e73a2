package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// OutboundTLS is the client TLS configuration for requests this server
// makes to services other than Matrix servers (push gateways): the
// system's CAs plus federation.ca_file, and federation.insecure_skip_verify.
func (c *Config) OutboundTLS() (*tls.Config, error) {
	// Without a CA file, nil RootCAs means the system's roots, which Go
	// then loads at the first handshake rather than at start (0.4 MB).
	var pool *x509.CertPool
	if c.Federation.CAFile != "" {
		var err error
		if pool, err = x509.SystemCertPool(); err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		path := c.Path(c.Federation.CAFile)
		pem, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("federation.ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("federation.ca_file %s: no PEM certificates in it", path)
		}
	}
	return &tls.Config{
		RootCAs:            pool,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: c.Federation.InsecureSkipVerify, //nolint:gosec // test deployments only; federationapi logs it at start
	}, nil
}
