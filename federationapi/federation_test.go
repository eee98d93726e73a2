package federationapi_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// publicKey is a server's current public key.
func publicKey(s *testserver.Server) ed25519.PublicKey {
	return s.Server.Key.PrivateKey.Public().(ed25519.PublicKey)
}

func TestServerKeysAreSignedAndComplete(t *testing.T) {
	oldPub, _, _ := ed25519.GenerateKey(rand.Reader)
	s := testserver.New(t, func(c *config.Config) {
		c.Federation.OldSigningKeys = []config.OldSigningKey{{KeyID: "ed25519:old", PublicKey: spec.Base64Bytes(oldPub).Encode(), ExpiredTS: 1_600_000_000_000}}
	})
	for _, path := range []string{"/_matrix/key/v2/server", "/_matrix/key/v2/server/" + url.PathEscape(s.Server.Key.ID)} {
		r := s.MustOK("GET", path, "", nil)
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		var keys gomatrixserverlib.ServerKeys
		if err := json.Unmarshal(r.Body, &keys); err != nil {
			t.Fatal(err)
		}
		checks, ed := gomatrixserverlib.CheckKeys("localhost", time.Now(), keys)
		if !checks.AllChecksOK {
			t.Fatalf("%s fails the checks: %+v\n%s", path, checks, r.Body)
		}
		if !bytes.Equal(ed[gomatrixserverlib.KeyID(s.Server.Key.ID)], publicKey(s)) {
			t.Fatalf("%s does not publish our key: %s", path, r.Body)
		}
		if err := gomatrixserverlib.VerifyJSON("localhost", gomatrixserverlib.KeyID(s.Server.Key.ID), publicKey(s), r.Body); err != nil {
			t.Fatalf("signature: %v", err)
		}
		week := time.Now().Add(7 * 24 * time.Hour)
		if d := keys.ValidUntilTS.Time().Sub(week); d < -time.Minute || d > time.Minute {
			t.Fatalf("valid_until_ts %v, want about a week from now", keys.ValidUntilTS.Time())
		}
		if old := keys.OldVerifyKeys["ed25519:old"]; !bytes.Equal(old.Key, oldPub) || old.ExpiredTS != 1_600_000_000_000 {
			t.Fatalf("old_verify_keys: %s", r.Body)
		}
	}
	s.ExpectError(405, "M_UNRECOGNIZED", "POST", "/_matrix/key/v2/server", "", map[string]any{})
}

func TestVersion(t *testing.T) {
	s := testserver.New(t)
	r := s.MustOK("GET", "/_matrix/federation/v1/version", "", nil)
	if r.Get("server.name").String() != "Plexus" || r.Get("server.version").String() == "" {
		t.Fatalf("version: %s", r)
	}
	s.ExpectError(404, "M_UNRECOGNIZED", "GET", "/_matrix/federation/v1/nonexistent", "", nil)
}

// verifySignedBy checks that a JSON object carries a valid signature of
// server with key.
func verifySignedBy(t *testing.T, raw []byte, server string, keyID string, key ed25519.PublicKey) {
	t.Helper()
	if err := gomatrixserverlib.VerifyJSON(server, gomatrixserverlib.KeyID(keyID), key, raw); err != nil {
		t.Fatalf("not signed by %s: %v\n%s", server, err, raw)
	}
}

func TestNotaryServesOtherServersKeysSignedByBoth(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]

	check := func(r *testserver.Response) {
		t.Helper()
		list := r.Get("server_keys").Array()
		if len(list) != 1 {
			t.Fatalf("want one response: %s", r)
		}
		raw := []byte(list[0].Raw)
		var keys gomatrixserverlib.ServerKeys
		if err := json.Unmarshal(raw, &keys); err != nil {
			t.Fatal(err)
		}
		if keys.ServerName != spec.ServerName(b.ServerName()) || !bytes.Equal(keys.VerifyKeys[gomatrixserverlib.KeyID(b.Server.Key.ID)].Key, publicKey(b)) {
			t.Fatalf("not b's keys: %s", raw)
		}
		verifySignedBy(t, raw, b.ServerName(), b.Server.Key.ID, publicKey(b))
		verifySignedBy(t, raw, a.ServerName(), a.Server.Key.ID, publicKey(a))
	}
	// The first query fetches b's keys over TLS, the next ones come from
	// the cache; both shapes of the endpoint.
	check(a.MustOK("GET", "/_matrix/key/v2/query/"+url.PathEscape(b.ServerName()), "", nil))
	check(a.MustOK("GET", "/_matrix/key/v2/query/"+url.PathEscape(b.ServerName())+"?minimum_valid_until_ts=1", "", nil))
	check(a.MustOK("POST", "/_matrix/key/v2/query", "", map[string]any{
		"server_keys": map[string]any{b.ServerName(): map[string]any{b.Server.Key.ID: map[string]any{"minimum_valid_until_ts": time.Now().UnixMilli()}}},
	}))
	check(a.MustOK("POST", "/_matrix/key/v2/query", "", map[string]any{"server_keys": map[string]any{b.ServerName(): map[string]any{}}}))

	// Our own keys, an unreachable server, nothing asked.
	r := a.MustOK("POST", "/_matrix/key/v2/query", "", map[string]any{"server_keys": map[string]any{
		a.ServerName(): map[string]any{}, "127.0.0.1:1": map[string]any{}, "not a name": map[string]any{},
	}})
	if list := r.Get("server_keys").Array(); len(list) != 1 || list[0].Get("server_name").String() != a.ServerName() {
		t.Fatalf("own and unreachable: %s", r)
	} else {
		verifySignedBy(t, []byte(list[0].Raw), a.ServerName(), a.Server.Key.ID, publicKey(a))
	}
	r = a.MustOK("POST", "/_matrix/key/v2/query", "", map[string]any{"server_keys": map[string]any{}})
	if r.Get("server_keys").Raw != "[]" {
		t.Fatalf("empty query: %s", r)
	}
	if r := a.MustOK("GET", "/_matrix/key/v2/query/127.0.0.1:1", "", nil); r.Get("server_keys").Raw != "[]" {
		t.Fatalf("unreachable server: %s", r)
	}

	// Bad requests.
	a.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/key/v2/query/bad%20name", "", nil)
	a.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/key/v2/query/"+url.PathEscape(b.ServerName())+"?minimum_valid_until_ts=soon", "", nil)
	a.ExpectError(400, "M_MISSING_PARAM", "POST", "/_matrix/key/v2/query", "", map[string]any{})
	a.ExpectError(400, "M_NOT_JSON", "POST", "/_matrix/key/v2/query", "", "nope")
	a.ExpectError(400, "M_BAD_JSON", "POST", "/_matrix/key/v2/query", "", map[string]any{"server_keys": []string{"x"}})
	a.ExpectError(400, "M_BAD_JSON", "POST", "/_matrix/key/v2/query", "", map[string]any{"server_keys": map[string]any{"x": map[string]any{"k": map[string]any{"minimum_valid_until_ts": "soon"}}}})
	many := map[string]any{}
	for i := 0; i < 201; i++ {
		many["s"+string(rune('a'+i%26))+strings.Repeat("x", i)+".example"] = map[string]any{}
	}
	a.ExpectError(400, "M_INVALID_PARAM", "POST", "/_matrix/key/v2/query", "", map[string]any{"server_keys": many})
}

// signedRequest builds a request from server from to destination, signed
// with key (from's own key when nil), aimed at base+path.
func signedRequest(t *testing.T, from *testserver.Server, key ed25519.PrivateKey, destination, method, base, path string, content any) *http.Request {
	t.Helper()
	if key == nil {
		key = from.Server.Key.PrivateKey
	}
	fr := fclient.NewFederationRequest(method, spec.ServerName(from.ServerName()), spec.ServerName(destination), path)
	if content != nil {
		if err := fr.SetContent(content); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.Sign(spec.ServerName(from.ServerName()), gomatrixserverlib.KeyID(from.Server.Key.ID), key); err != nil {
		t.Fatal(err)
	}
	hr, err := fr.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	var body io.Reader
	if fr.Content() != nil {
		body = bytes.NewReader(fr.Content())
	}
	req, err := http.NewRequest(method, base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = hr.Header
	return req
}

func do(t *testing.T, req *http.Request) (int, gjson.Result) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, gjson.ParseBytes(data)
}

// authedEndpoint serves a's Authed wrapper around a handler that echoes
// what it was handed, as a component's federation handler would see it.
func authedEndpoint(t *testing.T, a *testserver.Server) string {
	h := a.Server.Federation.Authed(func(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
		body, _ := io.ReadAll(r.Body)
		httputil.WriteJSON(w, 200, map[string]any{
			"origin": origin, "method": req.Method(), "uri": req.RequestURI(),
			"content": json.RawMessage(orNull(req.Content())), "body_again": string(body),
		})
		return nil
	})
	srv := httptest.NewServer(httputil.Middleware(h, 1<<20))
	t.Cleanup(srv.Close)
	return srv.URL
}

func orNull(b []byte) []byte {
	if len(b) == 0 {
		return []byte("null")
	}
	return b
}

func TestInboundRequestAuthentication(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	base := authedEndpoint(t, a)
	const path = "/_matrix/federation/v1/thing/%21room%3Aexample?x=1&y=%2F"

	// Signed by b: a fetches b's key over TLS and lets it through.
	status, body := do(t, signedRequest(t, b, nil, a.ServerName(), "PUT", base, path, map[string]any{"hello": "world", "n": 1}))
	if status != 200 || body.Get("origin").String() != b.ServerName() || body.Get("content.hello").String() != "world" ||
		body.Get("uri").String() != path || body.Get("method").String() != "PUT" || !strings.Contains(body.Get("body_again").String(), "world") {
		t.Fatalf("signed request: %d %s", status, body.Raw)
	}
	// Without a body; and again, from the key cache.
	for i := 0; i < 2; i++ {
		if status, body := do(t, signedRequest(t, b, nil, a.ServerName(), "GET", base, path, nil)); status != 200 || body.Get("content").Type != gjson.Null {
			t.Fatalf("GET: %d %s", status, body.Raw)
		}
	}
	// A request signed by a itself is checked against its own key without
	// any fetching.
	if status, body := do(t, signedRequest(t, a, nil, a.ServerName(), "GET", base, path, nil)); status != 200 || body.Get("origin").String() != a.ServerName() {
		t.Fatalf("own request: %d %s", status, body.Raw)
	}

	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name string
		req  func() *http.Request
		code int
		err  string
	}{
		{"unsigned", func() *http.Request {
			r, _ := http.NewRequest("GET", base+path, nil)
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"bearer only", func() *http.Request {
			r, _ := http.NewRequest("GET", base+path, nil)
			r.Header.Set("Authorization", "Bearer x")
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"malformed", func() *http.Request {
			r, _ := http.NewRequest("GET", base+path, nil)
			r.Header.Set("Authorization", `X-Matrix origin="x`)
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"bad signature", func() *http.Request {
			return signedRequest(t, b, otherKey, a.ServerName(), "GET", base, path, nil)
		}, 401, "M_UNAUTHORIZED"},
		{"wrong destination", func() *http.Request {
			return signedRequest(t, b, nil, "elsewhere.example", "GET", base, path, nil)
		}, 401, "M_UNAUTHORIZED"},
		{"signed for another path", func() *http.Request {
			r := signedRequest(t, b, nil, a.ServerName(), "GET", base, path, nil)
			r.URL.Path += "x"
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"signed for another method", func() *http.Request {
			r := signedRequest(t, b, nil, a.ServerName(), "GET", base, path, nil)
			r.Method = "DELETE"
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"tampered body", func() *http.Request {
			r := signedRequest(t, b, nil, a.ServerName(), "PUT", base, path, map[string]any{"a": 1})
			r.Body = io.NopCloser(strings.NewReader(`{"a":2}`))
			r.ContentLength = 7
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"unknown origin", func() *http.Request {
			r, _ := http.NewRequest("GET", base+path, nil)
			r.Header.Set("Authorization", `X-Matrix origin="127.0.0.1:1",destination="`+a.ServerName()+`",key="ed25519:x",sig="AAAA"`)
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"invalid origin", func() *http.Request {
			r, _ := http.NewRequest("GET", base+path, nil)
			r.Header.Set("Authorization", `X-Matrix origin="bad name",key="ed25519:x",sig="AAAA"`)
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"two origins", func() *http.Request {
			r := signedRequest(t, b, nil, a.ServerName(), "GET", base, path, nil)
			r.Header.Add("Authorization", `X-Matrix origin="other.example",key="ed25519:x",sig="AAAA"`)
			return r
		}, 401, "M_UNAUTHORIZED"},
		{"body not JSON", func() *http.Request {
			r := signedRequest(t, b, nil, a.ServerName(), "PUT", base, path, map[string]any{"a": 1})
			r.Body = io.NopCloser(strings.NewReader(`{nope`))
			r.ContentLength = 5
			return r
		}, 400, "M_NOT_JSON"},
	}
	for _, c := range cases {
		status, body := do(t, c.req())
		if status != c.code || body.Get("errcode").String() != c.err {
			t.Errorf("%s: %d %s, want %d %s", c.name, status, body.Raw, c.code, c.err)
		}
	}

	// A request without the destination parameter (older servers) is
	// checked as if it named us.
	req := signedRequest(t, b, nil, a.ServerName(), "GET", base, path, nil)
	req.Header.Set("Authorization", strings.Replace(req.Header.Get("Authorization"), `,destination="`+a.ServerName()+`"`, "", 1))
	if status, body := do(t, req); status != 200 {
		t.Fatalf("without destination: %d %s", status, body.Raw)
	}
}

func TestHandleRegistersAuthenticatedRoutes(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	// Routes registered after Register are added at once; in the server
	// they are registered before it serves.
	a.Server.Federation.Handle("/_matrix/federation/v1/test_echo/{word}", func(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
		if httputil.Vars(r)["word"] == "fail" {
			return httputil.Forbidden("no")
		}
		httputil.WriteJSON(w, 200, map[string]any{"origin": origin, "word": httputil.Vars(r)["word"]})
		return nil
	}, http.MethodGet)

	// b → a over TLS, found by server name, signed by b's federation client.
	resp, err := b.Server.Federation.DoSigned(ctx(t), "GET", spec.ServerName(a.ServerName()), "/_matrix/federation/v1/test_echo/hi%20there", nil)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || gjson.GetBytes(data, "origin").String() != b.ServerName() || gjson.GetBytes(data, "word").String() != "hi there" {
		t.Fatalf("signed request over TLS: %d %s", resp.StatusCode, data)
	}
	resp, err = b.Server.Federation.DoSigned(ctx(t), "GET", spec.ServerName(a.ServerName()), "/_matrix/federation/v1/test_echo/fail", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("handler error: %d", resp.StatusCode)
	}
	a.ExpectError(401, "M_UNAUTHORIZED", "GET", "/_matrix/federation/v1/test_echo/x", "", nil)
	a.ExpectError(405, "M_UNRECOGNIZED", "POST", "/_matrix/federation/v1/test_echo/x", "", nil)

	// The typed clients reach the other server too.
	v, err := b.Server.Federation.KeyClient().GetVersion(ctx(t), spec.ServerName(a.ServerName()))
	if err != nil || v.Server.Name != "Plexus" {
		t.Fatalf("GetVersion: %+v %v", v, err)
	}
	keys, err := a.Server.Federation.KeyClient().GetServerKeys(ctx(t), spec.ServerName(b.ServerName()))
	if err != nil || keys.ServerName != spec.ServerName(b.ServerName()) {
		t.Fatalf("GetServerKeys: %v", err)
	}
}

func TestTLSVerification(t *testing.T) {
	ca := testserver.NewCA(t)
	strict := testserver.NewTLS(t, ca)
	insecure := testserver.NewTLS(t, ca, func(c *config.Config) { c.Federation.InsecureSkipVerify = true; c.Federation.CAFile = "" })
	// A server with a self-signed certificate made at start, trusting only
	// the system's CAs.
	selfSigned := testserver.NewTLS(t, ca, func(c *config.Config) { c.Listen.TLSCert, c.Listen.TLSKey, c.Federation.CAFile = "", "", "" })
	name := spec.ServerName(selfSigned.ServerName())

	if _, err := strict.Server.Federation.KeyClient().GetServerKeys(ctx(t), name); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an untrusted certificate was accepted: %v", err)
	}
	if _, err := insecure.Server.Federation.KeyClient().GetServerKeys(ctx(t), name); err != nil {
		t.Fatalf("insecure_skip_verify should accept any certificate: %v", err)
	}
	// Without the test CA, the CA-signed servers are untrusted as well.
	if _, err := selfSigned.Server.Federation.KeyClient().GetServerKeys(ctx(t), spec.ServerName(strict.ServerName())); err == nil {
		t.Fatal("a certificate from an unknown CA was accepted")
	}

	// The self-signed certificate is in the data folder, for the server's
	// IP, and is what the TLS listener serves.
	pem, err := os.ReadFile(filepath.Join(selfSigned.Config.DataDir, config.SelfSignedCertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := ca.Pool().Clone()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("self-signed certificate is not PEM")
	}
	client := ca.HTTPClient()
	client.Transport.(*http.Transport).TLSClientConfig.RootCAs = pool
	resp, err := client.Get(selfSigned.TLSURL + "/_matrix/federation/v1/version")
	if err != nil {
		t.Fatalf("TLS with the self-signed certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("version over TLS: %d", resp.StatusCode)
	}
}

func TestKeysThroughANotary(t *testing.T) {
	// a and the notary share a CA; b's certificate comes from another CA
	// that only the notary trusts. a cannot fetch b's keys itself, so it
	// asks the notary, whose own keys it fetched over TLS.
	caA, caB := testserver.NewCA(t), testserver.NewCA(t)
	both := filepath.Join(t.TempDir(), "both.crt")
	pa, _ := os.ReadFile(caA.CertFile)
	pb, _ := os.ReadFile(caB.CertFile)
	if err := os.WriteFile(both, append(pa, pb...), 0o600); err != nil {
		t.Fatal(err)
	}
	notary := testserver.NewTLS(t, caA, func(c *config.Config) { c.Federation.CAFile = both })
	b := testserver.NewTLS(t, caB)
	a := testserver.NewTLS(t, caA, func(c *config.Config) { c.Federation.TrustedKeyServers = []string{notary.ServerName()} })
	base := authedEndpoint(t, a)

	status, body := do(t, signedRequest(t, b, nil, a.ServerName(), "GET", base, "/_matrix/federation/v1/x", nil))
	if status != 200 || body.Get("origin").String() != b.ServerName() {
		t.Fatalf("request verified through the notary: %d %s", status, body.Raw)
	}
	// Without a notary a cannot verify b.
	lonely := testserver.NewTLS(t, caA)
	status, body = do(t, signedRequest(t, b, nil, lonely.ServerName(), "GET", authedEndpoint(t, lonely), "/_matrix/federation/v1/x", nil))
	if status != 401 {
		t.Fatalf("without a notary: %d %s", status, body.Raw)
	}
}
