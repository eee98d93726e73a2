package mediaapi

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/storage"
)

// newTestMediaAPI builds the media API on a fresh SQLite database; opts
// may replace the guarded client so that loopback test sites are reachable.
func newTestMediaAPI(t *testing.T, opts ...Option) *MediaAPI {
	t.Helper()
	cfg := config.Default("localhost")
	cfg.DataDir = t.TempDir()
	cfg.Media.URLPreview.Enabled = true
	db, err := storage.Open(filepath.Join(cfg.DataDir, "plexus.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	m, err := New(context.Background(), &cfg, db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestPreviewReadsOpenGraphAndStoresTheImage(t *testing.T) {
	var img bytes.Buffer
	png.Encode(&img, image.NewRGBA(image.Rect(0, 0, 20, 10)))
	hits := 0
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		switch r.URL.Path {
		case "/page":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write([]byte(`<html><head><title>Fallback</title><meta property="og:title" content="A page">` +
				`<meta property="og:image" content="/pic.png"></head><body>` + strings.Repeat("x", 5000) + `</body></html>`))
		case "/pic.png":
			w.Header().Set("Content-Type", "image/png")
			w.Write(img.Bytes())
		default:
			http.NotFound(w, r)
		}
	}))
	defer site.Close()
	m := newTestMediaAPI(t, withRedirectClient(&http.Client{Timeout: 5 * time.Second}))
	preview := func(u string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(u), nil)
		if err := m.previewURL(rec, req, &accounts.Session{Localpart: "alice"}); err != nil {
			return 0, map[string]any{"err": err.Error()}
		}
		var og map[string]any
		json.Unmarshal(rec.Body.Bytes(), &og)
		return rec.Code, og
	}
	code, og := preview(site.URL + "/page")
	if code != 200 || og["og:title"] != "A page" {
		t.Fatalf("preview: %d %v", code, og)
	}
	uri, _ := og["og:image"].(string)
	server, id, err := ParseMXC(uri)
	if err != nil || server != "localhost" {
		t.Fatalf("og:image %q is not our media: %v", uri, err)
	}
	if og["matrix:image:size"] != float64(img.Len()) || og["og:image:type"] != "image/png" {
		t.Errorf("image fields: %v", og)
	}
	med, err := m.store.media(context.Background(), server, id)
	if err != nil || med == nil || med.Size != int64(img.Len()) {
		t.Fatalf("stored image: %+v, %v", med, err)
	}
	// A second preview comes from the cache.
	before := hits
	if code, og2 := preview(site.URL + "/page#frag"); code != 200 || og2["og:image"] != uri || hits != before {
		t.Fatalf("cached preview: %d %v, %d new fetches", code, og2, hits-before)
	}
	// Failures are Matrix errors, not 500s.
	if _, og := preview(site.URL + "/missing"); !strings.Contains(og["err"].(string), "M_UNKNOWN") || !strings.Contains(og["err"].(string), "404") {
		t.Errorf("missing page: %v", og)
	}
}
