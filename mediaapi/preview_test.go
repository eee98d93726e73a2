package mediaapi_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestPreviewURLIsOffByDefault(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "password1234")
	r := s.ExpectError(403, "M_FORBIDDEN", "GET", "/_matrix/client/v1/media/preview_url?url="+url.QueryEscape("https://example.org/"), alice.AccessToken, nil)
	if !strings.Contains(r.Get("error").String(), "disabled") {
		t.Errorf("error does not say previews are disabled: %s", r.Body)
	}
}

func TestPreviewURLRefusesInternalAddresses(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Media.URLPreview.Enabled = true })
	alice := s.Register("alice", "password1234")
	hit := false
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hit = true
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<title>internal</title>"))
	}))
	defer internal.Close()
	port := internal.URL[strings.LastIndex(internal.URL, ":")+1:]
	for _, target := range []string{internal.URL + "/admin", "http://localhost:" + port + "/", "http://[::1]:" + port + "/", "http://169.254.169.254/latest/meta-data/"} {
		for _, prefix := range []string{"/_matrix/client/v1/media", "/_matrix/media/v3"} {
			s.ExpectError(403, "M_FORBIDDEN", "GET", prefix+"/preview_url?url="+url.QueryEscape(target), alice.AccessToken, nil)
		}
	}
	if hit {
		t.Fatal("the internal server was fetched")
	}
	for _, bad := range []string{"", "file:///etc/passwd", "gopher://x/", "not a url"} {
		r := s.Request("GET", "/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(bad), alice.AccessToken, nil)
		if r.Status != http.StatusBadRequest {
			t.Errorf("preview of %q: %s", bad, r)
		}
	}
	if r := s.Request("GET", "/_matrix/client/v1/media/preview_url?url=https://example.org/", "", nil); r.Status != http.StatusUnauthorized {
		t.Errorf("preview without token: %s", r)
	}
}
