// Package testserver starts a whole Plexus in-process on a loopback port,
// with a temporary data folder, and offers a small Matrix client to drive
// it over HTTP as real clients do.
//
// Federation tests start servers that federate over TLS on loopback:
//
//	servers := testserver.NewFederated(t, 2)
//	a, b := servers[0], servers[1]
//
// Each is named "127.0.0.1:<its TLS port>" (the port is opened before the
// config is made, see NewTLS), serves a certificate signed by a CA made
// for the test, and trusts that CA for outbound federation, so a and b
// reach each other by server name with TLS verification on. NewCA and
// NewTLS build the same by hand, for example to add a server whose
// certificate the others do not trust. No test server asks a notary
// (trusted_key_servers is empty).
package testserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/server"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// Server is a running test homeserver.
type Server struct {
	URL    string
	Config *config.Config
	Server *server.Server
	// TLSURL is https://<address> of the TLS listener, when there is one.
	TLSURL string
	t      testing.TB
	// done receives Serve's result; nil while stopped (restart.go).
	done chan error
}

// Option changes the config before the server starts.
type Option func(*config.Config)

// New starts a server on SQLite with open registration, cheap password
// hashing and rate limits off, changed by opts. It stops when the test ends.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return NewWithDatabase(t, filepath.Join(t.TempDir(), "plexus.db"), opts...)
}

// ForEachDatabase runs fn against a server on each test database: SQLite,
// and PostgreSQL when PLEXUS_TEST_POSTGRES is set.
func ForEachDatabase(t *testing.T, fn func(t *testing.T, s *Server), opts ...Option) {
	for name, conn := range storagetest.Connections(t) {
		t.Run(name, func(t *testing.T) { fn(t, NewWithDatabase(t, conn, opts...)) })
	}
}

// NewWithDatabase is New on the given database connection string.
func NewWithDatabase(t testing.TB, database string, opts ...Option) *Server {
	t.Helper()
	return start(t, baseConfig(t, database), nil, opts...)
}

// baseConfig is the test configuration before options: no notaries, so a
// test never reaches out to the internet for keys.
func baseConfig(t testing.TB, database string) config.Config {
	cfg := config.Default("localhost")
	cfg.DataDir = t.TempDir()
	cfg.Database = database
	cfg.Listen.HTTP = "127.0.0.1:0"
	cfg.Registration.Open = true
	cfg.Registration.BcryptCost = 4
	cfg.RateLimit.Enabled = false
	cfg.Log.Level = "warn"
	cfg.Federation.TrustedKeyServers = nil
	return cfg
}

// start applies opts to cfg and runs a server until the test ends; tlsLn,
// when not nil, is its already open TLS port.
func start(t testing.TB, cfg config.Config, tlsLn net.Listener, opts ...Option) *Server {
	t.Helper()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	srv, err := server.New(context.Background(), &cfg)
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	srv.TLSListener = tlsLn
	if err := srv.Listen(); err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	s := &Server{URL: "http://" + srv.HTTPAddr, Config: &cfg, Server: srv, t: t, done: done}
	if srv.TLSAddr != "" {
		s.TLSURL = "https://" + srv.TLSAddr
	}
	t.Cleanup(s.shutdown) // the server running then, after any Restart (restart.go)
	return s
}

// Response is a finished HTTP exchange.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON is the body parsed with gjson.
func (r *Response) JSON() gjson.Result { return gjson.ParseBytes(r.Body) }

// Get reads one field of the JSON body.
func (r *Response) Get(path string) gjson.Result { return gjson.GetBytes(r.Body, path) }

func (r *Response) String() string { return fmt.Sprintf("%d %s", r.Status, r.Body) }

// Request sends a request. body is sent as is when it is []byte or string,
// else encoded as JSON; nil sends no body. token "" sends no token.
func (s *Server) Request(method, path, token string, body any) *Response {
	s.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			s.t.Fatalf("encode body: %v", err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, s.URL+path, rd)
	if err != nil {
		s.t.Fatalf("new request: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// MustOK sends a request and fails the test unless it answers 200.
func (s *Server) MustOK(method, path, token string, body any) *Response {
	s.t.Helper()
	r := s.Request(method, path, token, body)
	if r.Status != http.StatusOK {
		s.t.Fatalf("%s %s: %s", method, path, r)
	}
	return r
}

// ExpectError sends a request and fails the test unless it answers with
// the given status and errcode.
func (s *Server) ExpectError(status int, errcode, method, path, token string, body any) *Response {
	s.t.Helper()
	r := s.Request(method, path, token, body)
	if r.Status != status || r.Get("errcode").String() != errcode {
		s.t.Fatalf("%s %s: got %s, want %d %s", method, path, r, status, errcode)
	}
	return r
}

// User is a registered, logged-in test user.
type User struct {
	UserID, Localpart, Password, AccessToken, DeviceID string
}

// Register creates a user through open registration (the dummy flow) and
// returns it logged in.
func (s *Server) Register(localpart, password string) *User {
	s.t.Helper()
	r := s.MustOK("POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": localpart, "password": password, "auth": map[string]string{"type": "m.login.dummy"},
	})
	return &User{
		UserID: r.Get("user_id").String(), Localpart: localpart, Password: password,
		AccessToken: r.Get("access_token").String(), DeviceID: r.Get("device_id").String(),
	}
}

// Login logs a user in with a password and returns the new device.
func (s *Server) Login(localpart, password string) *User {
	s.t.Helper()
	r := s.MustOK("POST", "/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": localpart}, "password": password,
	})
	return &User{
		UserID: r.Get("user_id").String(), Localpart: localpart, Password: password,
		AccessToken: r.Get("access_token").String(), DeviceID: r.Get("device_id").String(),
	}
}
