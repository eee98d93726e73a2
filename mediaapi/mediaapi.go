// Package mediaapi is the content repository: uploads, downloads,
// thumbnails, media of other servers fetched over federation and cached,
// our media served to other servers, URL previews, and quarantine and
// deletion for admins. Content lives on disk named by its SHA-256
// (files.go); metadata in the mediaapi_* tables (storage.go).
package mediaapi

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/storage"
)

// Federation is what the media API needs from the federation API to fetch
// other servers' media: signed requests, and the unsigned client for the
// legacy /_matrix/media download endpoint.
type Federation interface {
	DoSigned(ctx context.Context, method string, destination spec.ServerName, path string, content any) (*http.Response, error)
	KeyClient() *fclient.Client
}

// MediaAPI is the content repository.
type MediaAPI struct {
	cfg        config.Media
	serverName string
	db         *storage.DB
	store      *store
	files      *fileStore
	fed        Federation // nil: remote media is not fetched

	// uploadLimit limits uploads per user and downloadLimit
	// unauthenticated downloads per IP; nil when rate limiting is off.
	uploadLimit   *httputil.RateLimiter
	downloadLimit *httputil.RateLimiter

	uploads  *uploadWaiters
	missing  *missingCache // remote media its server said it lacks, for a minute
	remote   flightGroup   // concurrent fetches of one remote file share one request
	thumbs   flightGroup   // concurrent generations of one thumbnail share one
	thumbSem chan struct{}
	// redirectClient follows Location answers of other servers and fetches
	// URL previews; it refuses to connect to internal addresses.
	redirectClient *http.Client
	previews       *previewer

	bg     context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	logger *logrus.Entry
}

// Option changes how the media API is built.
type Option func(*MediaAPI)

// WithFederation lets the media API fetch other servers' media.
func WithFederation(f Federation) Option { return func(m *MediaAPI) { m.fed = f } }

// withRedirectClient replaces the guarded client (tests whose fake
// servers listen on loopback).
func withRedirectClient(c *http.Client) Option { return func(m *MediaAPI) { m.redirectClient = c } }

// New opens the media storage folder, migrates the tables and starts the
// janitor that expires unused pending uploads.
func New(ctx context.Context, cfg *config.Config, db *storage.DB, opts ...Option) (*MediaAPI, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	files, err := newFileStore(cfg.Path(cfg.Media.StoragePath))
	if err != nil {
		return nil, err
	}
	blocked, err := parseCIDRs(cfg.Media.URLPreview.BlockedIPRanges)
	if err != nil {
		return nil, fmt.Errorf("media.url_preview.blocked_ip_ranges: %w", err)
	}
	m := &MediaAPI{
		cfg: cfg.Media, serverName: cfg.ServerName, db: db, store: &store{db: db}, files: files,
		uploads:        newUploadWaiters(),
		missing:        &missingCache{ttl: time.Minute, entries: map[string]time.Time{}},
		thumbSem:       make(chan struct{}, 2),
		redirectClient: newGuardedClient(blocked, 30*time.Second),
		logger:         logrus.WithField("component", component),
	}
	if cfg.RateLimit.Enabled {
		m.uploadLimit = httputil.NewRateLimiter(cfg.Media.UploadsPerMinute/60, cfg.Media.UploadBurst)
		m.downloadLimit = httputil.NewRateLimiter(cfg.RateLimit.RequestsPerSecond, cfg.RateLimit.Burst)
	}
	for _, o := range opts {
		o(m)
	}
	m.previews = newPreviewer(m.redirectClient, cfg.Media.URLPreview.MaxPageSize)
	m.bg, m.stop = context.WithCancel(context.Background())
	m.wg.Add(1)
	go m.janitor()
	return m, nil
}

// Close stops background work (thumbnailing, the janitor) and waits for it.
func (m *MediaAPI) Close() {
	m.stop()
	m.wg.Wait()
}

// janitor deletes pending uploads whose time ran out, every ten minutes.
func (m *MediaAPI) janitor() {
	defer m.wg.Done()
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		if err := m.store.deleteExpiredPending(m.bg, m.serverName, storage.NowMillis()); err != nil && m.bg.Err() == nil {
			m.logger.WithError(err).Warn("expire pending uploads")
		}
		select {
		case <-m.bg.Done():
			return
		case <-t.C:
		}
	}
}

// background runs fn in the background unless the API is closing.
func (m *MediaAPI) background(fn func(ctx context.Context)) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		fn(m.bg)
	}()
}

// MaxUploadSize is the largest body the upload endpoints accept; the
// server's general body cap must not cut them shorter (see SplitUploads).
func (m *MediaAPI) MaxUploadSize() int64 { return m.cfg.MaxUploadSize }

// IsUpload reports whether r is an upload, whose body may be as large as
// MaxUploadSize rather than max_request_body_size.
func IsUpload(r *http.Request) bool {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		return false
	}
	return uploadPath.MatchString(r.URL.Path)
}

// SplitUploads sends uploads to uploads and everything else to rest: the
// two are the same router under body caps of different sizes.
func SplitUploads(rest, uploads http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsUpload(r) {
			uploads.ServeHTTP(w, r)
			return
		}
		rest.ServeHTTP(w, r)
	})
}
