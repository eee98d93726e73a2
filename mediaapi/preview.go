package mediaapi

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/html"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/storage"
)

const (
	previewTimeout  = 15 * time.Second
	previewCacheTTL = time.Hour
	previewCacheMax = 1000
)

// previewer fetches pages for link previews through the guarded client
// and keeps answers for an hour.
type previewer struct {
	client  *http.Client
	maxPage int64

	mu    sync.Mutex
	cache map[string]cachedPreview
	group flightGroup
}

type cachedPreview struct {
	og      map[string]any
	expires time.Time
}

func newPreviewer(client *http.Client, maxPage int64) *previewer {
	return &previewer{client: client, maxPage: maxPage, cache: map[string]cachedPreview{}}
}

// previewURL is GET …/media/preview_url?url=…
func (m *MediaAPI) previewURL(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if !m.cfg.URLPreview.Enabled {
		return httputil.Forbidden("URL previews are disabled on this server (media.url_preview.enabled)")
	}
	raw := r.URL.Query().Get("url")
	if raw == "" {
		return httputil.MissingParam("url is required")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(raw) > 2048 {
		return httputil.InvalidParam("url must be an http or https URL")
	}
	u.Fragment = ""
	key := u.String()
	p := m.previews
	p.mu.Lock()
	c, ok := p.cache[key]
	p.mu.Unlock()
	if ok && time.Now().Before(c.expires) {
		httputil.WriteJSON(w, http.StatusOK, c.og)
		return nil
	}
	v, err, _ := p.group.do(key, func() (any, error) { return m.fetchPreview(u) })
	if err != nil {
		return err
	}
	og := v.(map[string]any)
	p.mu.Lock()
	if len(p.cache) >= previewCacheMax {
		p.cache = map[string]cachedPreview{} // crude but bounded
	}
	p.cache[key] = cachedPreview{og: og, expires: time.Now().Add(previewCacheTTL)}
	p.mu.Unlock()
	httputil.WriteJSON(w, http.StatusOK, og)
	return nil
}

func previewUnavailable(why string) error {
	return &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: "Cannot preview this URL: " + why}
}

// fetchPreview fetches u and describes it: Open Graph properties and the
// title of an HTML page, or the image itself stored as media.
func (m *MediaAPI) fetchPreview(u *url.URL) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(m.bg, previewTimeout)
	defer cancel()
	resp, err := m.getGuarded(ctx, u.String())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	base, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	og := map[string]any{}
	switch {
	case base == "text/html" || base == "application/xhtml+xml":
		og = parseOpenGraph(io.LimitReader(resp.Body, m.cfg.URLPreview.MaxPageSize))
		if img, ok := og["og:image"].(string); ok && img != "" {
			delete(og, "og:image")
			if iu, err := u.Parse(img); err == nil && (iu.Scheme == "http" || iu.Scheme == "https") {
				if uri, size, ctype, err := m.storePreviewImage(ctx, iu.String()); err == nil {
					og["og:image"], og["matrix:image:size"], og["og:image:type"] = uri, size, ctype
				}
			}
		}
	case thumbnailable[base]:
		uri, size, err := m.storePreviewBody(ctx, resp, base)
		if err != nil {
			return nil, err
		}
		og["og:image"], og["matrix:image:size"], og["og:image:type"] = uri, size, base
	}
	return og, nil
}

// getGuarded GETs a URL with the guarded client, mapping failures
// (including refused internal addresses) to a Matrix error.
func (m *MediaAPI) getGuarded(ctx context.Context, rawURL string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, httputil.InvalidParam("url is not valid")
	}
	req.Header.Set("User-Agent", "Plexus URL preview")
	resp, err := m.previews.client.Do(req)
	if err != nil {
		if errors.Is(err, errBlockedAddress) {
			return nil, httputil.Forbidden("URL previews of internal addresses are not allowed")
		}
		return nil, previewUnavailable("the site cannot be reached")
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, previewUnavailable("the site answered " + resp.Status)
	}
	return resp, nil
}

func (m *MediaAPI) storePreviewImage(ctx context.Context, rawURL string) (uri string, size int64, contentType string, err error) {
	resp, err := m.getGuarded(ctx, rawURL)
	if err != nil {
		return "", 0, "", err
	}
	defer resp.Body.Close()
	base, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if !thumbnailable[base] {
		return "", 0, "", errNotImage
	}
	uri, size, err = m.storePreviewBody(ctx, resp, base)
	return uri, size, base, err
}

// storePreviewBody stores a fetched image as our media (no uploader).
func (m *MediaAPI) storePreviewBody(ctx context.Context, resp *http.Response, contentType string) (string, int64, error) {
	if resp.ContentLength > m.cfg.MaxUploadSize {
		return "", 0, previewUnavailable("the image is too large")
	}
	sha, size, err := m.files.write(resp.Body, m.cfg.MaxUploadSize)
	if err != nil {
		return "", 0, previewUnavailable("the image cannot be read")
	}
	med := &Media{ServerName: m.serverName, MediaID: newMediaID(), ContentType: contentType, Size: size, SHA256: sha, CreatedTS: storage.NowMillis()}
	if err := m.store.insertMedia(ctx, med); err != nil {
		return "", 0, err
	}
	return mxc(m.serverName, med.MediaID), size, nil
}

// parseOpenGraph collects og:* meta properties and the <title> from
// HTML, stopping at </head> (or the size limit the reader imposes).
func parseOpenGraph(r io.Reader) map[string]any {
	og := map[string]any{}
	z := html.NewTokenizer(r)
	z.SetMaxBuf(256 << 10)
	var title string
	inTitle := false
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return finishOpenGraph(og, title)
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			switch string(name) {
			case "title":
				inTitle = tt == html.StartTagToken && title == ""
			case "meta":
				var prop, content string
				for hasAttr {
					var k, v []byte
					k, v, hasAttr = z.TagAttr()
					switch strings.ToLower(string(k)) {
					case "property", "name":
						if p := strings.ToLower(string(v)); strings.HasPrefix(p, "og:") && prop == "" {
							prop = p
						}
					case "content":
						content = string(v)
					}
				}
				if prop != "" && len(og) < 50 {
					if _, seen := og[prop]; !seen {
						og[prop] = truncate(content, 1000)
					}
				}
			case "body":
				return finishOpenGraph(og, title)
			}
		case html.TextToken:
			if inTitle {
				title += string(z.Text())
			}
		case html.EndTagToken:
			name, _ := z.TagName()
			switch string(name) {
			case "title":
				inTitle = false
			case "head":
				return finishOpenGraph(og, title)
			}
		}
	}
}

func finishOpenGraph(og map[string]any, title string) map[string]any {
	if _, ok := og["og:title"]; !ok {
		if t := strings.Join(strings.Fields(title), " "); t != "" {
			og["og:title"] = truncate(t, 1000)
		}
	}
	return og
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary.
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n]
}
