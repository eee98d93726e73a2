package federationapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

func TestTransportTriesEachTargetWithTheBody(t *testing.T) {
	var gotHost, gotBody, gotSNI string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		gotHost, gotBody, gotSNI = r.Host, string(body), r.TLS.ServerName
		w.WriteHeader(204)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())

	tr := newTransport(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	// The httptest certificate is for example.com and 127.0.0.1; the first
	// target refuses connections.
	tr.resolver.resolved["srv.example"] = resolvedEntry{
		targets: []target{
			{Addr: "127.0.0.1:1", Host: "srv.example", TLSName: "example.com"},
			{Addr: strings.TrimPrefix(srv.URL, "https://"), Host: "srv.example", TLSName: "example.com"},
		},
		expires: time.Now().Add(time.Hour),
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Post("matrix://srv.example/_matrix/federation/v1/x", "application/json", bytes.NewReader([]byte(`{"a":1}`)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 || gotHost != "srv.example" || gotBody != `{"a":1}` || gotSNI != "example.com" {
		t.Fatalf("status %d, Host %q, body %q, SNI %q", resp.StatusCode, gotHost, gotBody, gotSNI)
	}

	// A certificate for another name is refused: wrong.example delegates
	// to localhost, which the httptest certificate does not name.
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	wkCalls := 0
	tr.resolver.wellKnown = func(ctx context.Context, host string) (*http.Response, error) {
		wkCalls++
		if host != "wrong.example" {
			return nil, errors.New("refused")
		}
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(`{"m.server":"localhost:` + port + `"}`))}, nil
	}
	if _, err := client.Get("matrix://wrong.example/x"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a certificate for another name was accepted: %v", err)
	}
	if _, ok := tr.resolver.resolved[spec.ServerName("wrong.example")]; ok {
		t.Fatal("targets that all failed should be forgotten")
	}
	if wkCalls != 1 {
		t.Fatalf("well-known fetched %d times; it should stay cached when requests fail", wkCalls)
	}
	if _, err := client.Get("https://srv.example/x"); err == nil {
		t.Fatal("a plain https URL should be refused")
	}
}
