package mediaapi_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestUploadAndDownloadOnBothPaths(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "password1234")
		body := []byte("hello, media")
		uri := upload(t, s, alice.AccessToken, "text/plain", "hello world.txt", body)
		path := mxcPath(t, uri)
		if !strings.HasPrefix(path, s.ServerName()+"/") {
			t.Fatalf("content_uri %s is not on %s", uri, s.ServerName())
		}

		// Authenticated: refused without a token, served with one.
		authed := s.URL + "/_matrix/client/v1/media/download/" + path
		if r := do(t, "GET", authed, "", "", nil); r.Status != http.StatusUnauthorized || r.errcode() != "M_MISSING_TOKEN" {
			t.Fatalf("authed download without token: %d %s", r.Status, r.Body)
		}
		r := do(t, "GET", authed, alice.AccessToken, "", nil)
		if r.Status != http.StatusOK || !bytes.Equal(r.Body, body) {
			t.Fatalf("authed download: %d %q", r.Status, r.Body)
		}
		if ct := r.Header.Get("Content-Type"); ct != "text/plain" {
			t.Errorf("Content-Type = %q", ct)
		}
		if cd := r.Header.Get("Content-Disposition"); cd != `inline; filename="hello world.txt"; filename*=utf-8''hello%20world.txt` {
			t.Errorf("Content-Disposition = %q", cd)
		}
		if r.Header.Get("X-Content-Type-Options") != "nosniff" || !strings.Contains(r.Header.Get("Content-Security-Policy"), "sandbox") {
			t.Errorf("missing safety headers: %v", r.Header)
		}

		// Legacy: works without a token, on v3 and r0, and with a file name.
		for _, v := range []string{"v3", "r0"} {
			r := do(t, "GET", s.URL+"/_matrix/media/"+v+"/download/"+path, "", "", nil)
			if r.Status != http.StatusOK || !bytes.Equal(r.Body, body) {
				t.Fatalf("legacy %s download: %d %q", v, r.Status, r.Body)
			}
		}
		r = do(t, "GET", s.URL+"/_matrix/media/v3/download/"+path+"/other%20name.txt", "", "", nil)
		if cd := r.Header.Get("Content-Disposition"); !strings.Contains(cd, "filename*=utf-8''other%20name.txt") {
			t.Errorf("file name from the path: Content-Disposition = %q", cd)
		}

		// Same content twice is stored once but gets two IDs.
		uri2 := upload(t, s, alice.AccessToken, "text/plain", "", body)
		if uri2 == uri {
			t.Fatal("second upload got the same media ID")
		}

		// Uploading needs a token.
		if r := do(t, "POST", s.URL+"/_matrix/media/v3/upload", "", "text/plain", body); r.Status != http.StatusUnauthorized {
			t.Fatalf("upload without token: %d %s", r.Status, r.Body)
		}
		// Unknown media and bad IDs are 404.
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v1/media/download/"+s.ServerName()+"/nosuchmedia", alice.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/media/v3/download/"+s.ServerName()+"/bad.id", "", nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/media/v3/download/bad_server!/abc", "", nil)
	})
}

func TestDangerousContentIsServedAsAttachment(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "password1234")
	cases := []struct{ contentType, name, wantType, wantDisposition string }{
		{"text/html", "page.html", "text/html", `attachment; filename="page.html"; filename*=utf-8''page.html`},
		{"image/svg+xml", "", "image/svg+xml", "attachment"},
		{"application/javascript", "x.js", "application/javascript", `attachment; filename="x.js"; filename*=utf-8''x.js`},
		{"image/png", "naïve \"quote\".png", "image/png", `inline; filename*=utf-8''na%C3%AFve%20%22quote%22.png`},
		{"text/plain; charset=utf-8", "", "text/plain; charset=utf-8", "inline"},
	}
	for _, c := range cases {
		uri := upload(t, s, alice.AccessToken, c.contentType, c.name, []byte("<script>alert(1)</script>"))
		r := do(t, "GET", s.URL+"/_matrix/client/v1/media/download/"+mxcPath(t, uri), alice.AccessToken, "", nil)
		if got := r.Header.Get("Content-Type"); got != c.wantType {
			t.Errorf("%s: Content-Type = %q, want %q", c.contentType, got, c.wantType)
		}
		if got := r.Header.Get("Content-Disposition"); got != c.wantDisposition {
			t.Errorf("%s: Content-Disposition = %q, want %q", c.contentType, got, c.wantDisposition)
		}
		if r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", c.contentType)
		}
	}
}

func TestUploadSizeLimit(t *testing.T) {
	// The media limit is above the general body cap: uploads up to it work,
	// larger ones get M_TOO_LARGE, and other requests keep the general cap.
	s := testserver.New(t, func(c *config.Config) {
		c.MaxRequestBodySize = 4096
		c.Media.MaxUploadSize = 64 << 10
	})
	alice := s.Register("alice", "password1234")
	upload(t, s, alice.AccessToken, "application/octet-stream", "", make([]byte, 60<<10))
	r := do(t, "POST", s.URL+"/_matrix/media/v3/upload", alice.AccessToken, "application/octet-stream", make([]byte, 65<<10))
	if r.Status != http.StatusRequestEntityTooLarge || r.errcode() != "M_TOO_LARGE" {
		t.Fatalf("oversized upload: %d %s", r.Status, r.Body)
	}
	// Without a Content-Length (chunked), the limit holds while streaming.
	req, _ := http.NewRequest("POST", s.URL+"/_matrix/media/v3/upload", struct{ *bytes.Reader }{bytes.NewReader(make([]byte, 70<<10))})
	req.Header.Set("Authorization", "Bearer "+alice.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked oversized upload: %d", resp.StatusCode)
	}
	big := `{"displayname": "` + strings.Repeat("x", 5000) + `"}`
	s.ExpectError(413, "M_TOO_LARGE", "PUT", "/_matrix/client/v3/profile/"+alice.UserID+"/displayname", alice.AccessToken, big)
	cfg := s.MustOK("GET", "/_matrix/client/v1/media/config", alice.AccessToken, nil)
	if cfg.Get("m\\.upload\\.size").Int() != 64<<10 {
		t.Fatalf("config: %s", cfg.Body)
	}
	s.MustOK("GET", "/_matrix/media/v3/config", alice.AccessToken, nil)
}

func TestAsyncUpload(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "password1234")
		bob := s.Register("bob", "password1234")
		created := s.MustOK("POST", "/_matrix/media/v1/create", alice.AccessToken, struct{}{})
		uri := created.Get("content_uri").String()
		if created.Get("unused_expires_at").Int() <= 0 {
			t.Fatalf("create: %s", created.Body)
		}
		path := mxcPath(t, uri)
		dl := s.URL + "/_matrix/client/v1/media/download/" + path
		if r := do(t, "GET", dl+"?timeout_ms=0", alice.AccessToken, "", nil); r.Status != http.StatusGatewayTimeout || r.errcode() != "M_NOT_YET_UPLOADED" {
			t.Fatalf("download before upload: %d %s", r.Status, r.Body)
		}
		put := s.URL + "/_matrix/media/v3/upload/" + path
		if r := do(t, "PUT", put, bob.AccessToken, "text/plain", []byte("bob's")); r.Status != http.StatusForbidden || r.errcode() != "M_FORBIDDEN" {
			t.Fatalf("upload by another user: %d %s", r.Status, r.Body)
		}

		// A download waiting with timeout_ms gets the content once it lands.
		waited := make(chan *rawResponse, 1)
		go func() { waited <- do(t, "GET", dl+"?timeout_ms=10000", alice.AccessToken, "", nil) }()
		if r := do(t, "PUT", put+"?filename=later.txt", alice.AccessToken, "text/plain", []byte("later")); r.Status != http.StatusOK {
			t.Fatalf("async upload: %d %s", r.Status, r.Body)
		}
		if r := <-waited; r.Status != http.StatusOK || string(r.Body) != "later" {
			t.Fatalf("waiting download: %d %s", r.Status, r.Body)
		}
		if r := do(t, "GET", dl, alice.AccessToken, "", nil); r.Status != http.StatusOK || string(r.Body) != "later" {
			t.Fatalf("download after upload: %d %s", r.Status, r.Body)
		}
		if r := do(t, "PUT", put, alice.AccessToken, "text/plain", []byte("again")); r.Status != http.StatusConflict || r.errcode() != "M_CANNOT_OVERWRITE_MEDIA" {
			t.Fatalf("second upload: %d %s", r.Status, r.Body)
		}
		if r := do(t, "PUT", s.URL+"/_matrix/media/v3/upload/"+s.ServerName()+"/neverCreated", alice.AccessToken, "text/plain", []byte("x")); r.Status != http.StatusNotFound {
			t.Fatalf("upload to an ID never created: %d %s", r.Status, r.Body)
		}
	})
}

func TestPendingUploadsPerUserAreCapped(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Media.MaxPendingUploads = 2 })
	alice := s.Register("alice", "password1234")
	for i := 0; i < 2; i++ {
		s.MustOK("POST", "/_matrix/media/v1/create", alice.AccessToken, struct{}{})
	}
	r := s.ExpectError(429, "M_LIMIT_EXCEEDED", "POST", "/_matrix/media/v1/create", alice.AccessToken, struct{}{})
	if gjson.GetBytes(r.Body, "retry_after_ms").Int() <= 0 {
		t.Errorf("no retry_after_ms: %s", r.Body)
	}
	// Another user has their own allowance.
	bob := s.Register("bob", "password1234")
	s.MustOK("POST", "/_matrix/media/v1/create", bob.AccessToken, struct{}{})
}

func TestUploadRateLimit(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) {
		c.RateLimit.Enabled = true
		c.RateLimit.RequestsPerSecond = 1000
		c.RateLimit.Burst = 1000
		c.RateLimit.AuthPerMinute = 1000
		c.RateLimit.AuthBurst = 1000
		c.Media.UploadsPerMinute = 1
		c.Media.UploadBurst = 3
	})
	alice := s.Register("alice", "password1234")
	for i := 0; i < 3; i++ {
		upload(t, s, alice.AccessToken, "text/plain", "", []byte("x"))
	}
	r := do(t, "POST", s.URL+"/_matrix/media/v3/upload", alice.AccessToken, "text/plain", []byte("x"))
	if r.Status != http.StatusTooManyRequests || r.errcode() != "M_LIMIT_EXCEEDED" {
		t.Fatalf("fourth upload: %d %s", r.Status, r.Body)
	}
}

func TestExpiredPendingUploadIsGone(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Media.MaxPendingUploads = 1 })
	alice := s.Register("alice", "password1234")
	path := mxcPath(t, s.MustOK("POST", "/_matrix/media/v1/create", alice.AccessToken, struct{}{}).Get("content_uri").String())
	s.ExpectError(429, "M_LIMIT_EXCEEDED", "POST", "/_matrix/media/v1/create", alice.AccessToken, struct{}{})
	// Let its time run out.
	id := strings.SplitN(path, "/", 2)[1]
	if _, err := s.Server.DB.Writer().ExecContext(t.Context(), "UPDATE mediaapi_media SET expires_ts = 1 WHERE media_id = $1", id); err != nil {
		t.Fatal(err)
	}
	if r := do(t, "PUT", s.URL+"/_matrix/media/v3/upload/"+path, alice.AccessToken, "text/plain", []byte("late")); r.Status != http.StatusNotFound || r.errcode() != "M_NOT_FOUND" {
		t.Fatalf("upload to an expired ID: %d %s", r.Status, r.Body)
	}
	s.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v1/media/download/"+path, alice.AccessToken, nil)
	// An expired ID no longer counts against the cap.
	s.MustOK("POST", "/_matrix/media/v1/create", alice.AccessToken, struct{}{})
}
