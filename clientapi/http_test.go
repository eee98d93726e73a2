package clientapi_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func expectCORS(t *testing.T, r *testserver.Response) {
	t.Helper()
	if r.Header.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(r.Header.Get("Access-Control-Allow-Methods"), "PUT") ||
		!strings.Contains(r.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("CORS headers missing: %v", r.Header)
	}
}

func TestHTTPErrors(t *testing.T) {
	s := testserver.New(t)
	for _, path := range []string{"/_matrix/client/v3/nonexistent", "/_matrix/client/v9/login", "/nothing"} {
		r := s.ExpectError(404, "M_UNRECOGNIZED", "GET", path, "", nil)
		expectCORS(t, r)
		if r.Header.Get("X-Request-Id") == "" {
			t.Fatalf("%s: no X-Request-Id", path)
		}
	}
	s.ExpectError(405, "M_UNRECOGNIZED", "DELETE", "/_matrix/client/v3/login", "", nil)
	s.ExpectError(405, "M_UNRECOGNIZED", "PUT", "/_matrix/client/versions", "", map[string]any{})
}

func TestCORSPreflight(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("alice", "pw")
	// Preflight runs none of the endpoint's logic: no token is asked for,
	// and logout does not log out.
	for _, path := range []string{"/_matrix/client/v3/login", "/_matrix/client/v3/logout", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/1", "/.well-known/matrix/client"} {
		r := s.Request("OPTIONS", path, "", nil)
		if r.Status != http.StatusOK {
			t.Fatalf("OPTIONS %s: %s", path, r)
		}
		expectCORS(t, r)
	}
	s.Request("OPTIONS", "/_matrix/client/v3/logout", u.AccessToken, nil)
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", u.AccessToken, nil)
	// Ordinary responses carry the headers too.
	expectCORS(t, s.MustOK("GET", "/_matrix/client/versions", "", nil))
}

func TestBodySizeLimit(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.MaxRequestBodySize = 2048 })
	big := `{"type":"m.login.password","password":"` + strings.Repeat("x", 4096) + `"}`
	s.ExpectError(413, "M_TOO_LARGE", "POST", "/_matrix/client/v3/login", "", big)

	// Without a Content-Length (chunked), the body is cut off as it is read.
	req, err := http.NewRequest("POST", s.URL+"/_matrix/client/v3/register", io.MultiReader(strings.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || gjson.GetBytes(data, "errcode").String() != "M_TOO_LARGE" {
		t.Fatalf("chunked: %d %s", resp.StatusCode, data)
	}

	// Under the limit is fine.
	s.Register("alice", strings.Repeat("p", 500))
}

func TestHealthAndMetrics(t *testing.T) {
	s := testserver.New(t)
	if r := s.MustOK("GET", "/health", "", nil); string(r.Body) != "OK" {
		t.Fatalf("health: %s", r)
	}
	s.MustOK("GET", "/_matrix/client/versions", "", nil)
	r := s.MustOK("GET", "/metrics", "", nil)
	body := string(r.Body)
	if !strings.Contains(body, "plexus_http_request_duration_seconds") {
		t.Fatalf("metrics lack the request histogram:\n%.2000s", body)
	}
	// Requests are labelled by route template, not raw path or "unmatched".
	if !strings.Contains(body, `route="/_matrix/client/versions"`) {
		t.Fatalf("metrics lack the versions route")
	}
}

func TestVersions(t *testing.T) {
	s := testserver.New(t)
	r := s.MustOK("GET", "/_matrix/client/versions", "", nil)
	versions := r.Get("versions").Array()
	if len(versions) == 0 {
		t.Fatalf("no versions: %s", r)
	}
	v1 := false
	for _, v := range versions {
		if v.Type != gjson.String {
			t.Fatalf("version %v is not a string", v)
		}
		v1 = v1 || strings.HasPrefix(v.String(), "v1.")
	}
	if !v1 || !r.Get("unstable_features").IsObject() {
		t.Fatalf("versions: %s", r)
	}
	// No token needed, and a bad one is ignored.
	s.MustOK("GET", "/_matrix/client/versions", "not-a-token", nil)
}

func TestWellKnown(t *testing.T) {
	s := testserver.New(t)
	s.ExpectError(404, "M_NOT_FOUND", "GET", "/.well-known/matrix/client", "", nil)
	s.ExpectError(404, "M_NOT_FOUND", "GET", "/.well-known/matrix/server", "", nil)

	s = testserver.New(t, func(c *config.Config) {
		c.WellKnown = config.WellKnown{ClientBaseURL: "https://matrix.example.org", Server: "matrix.example.org:443"}
	})
	r := s.MustOK("GET", "/.well-known/matrix/client", "", nil)
	if r.Get(`m\.homeserver.base_url`).String() != "https://matrix.example.org" {
		t.Fatalf("client well-known: %s", r)
	}
	expectCORS(t, r)
	if r = s.MustOK("GET", "/.well-known/matrix/server", "", nil); r.Get(`m\.server`).String() != "matrix.example.org:443" {
		t.Fatalf("server well-known: %s", r)
	}
}
