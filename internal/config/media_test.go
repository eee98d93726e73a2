package config

import (
	"strings"
	"testing"
)

func TestMediaDefaultsAndValidation(t *testing.T) {
	cfg := Default("example.org")
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if cfg.Media.MaxUploadSize != 50<<20 || cfg.Media.StoragePath != "media" || cfg.Media.URLPreview.Enabled || len(cfg.Media.ThumbnailSizes) != 5 {
		t.Errorf("media defaults: %+v", cfg.Media)
	}
	cases := []struct {
		edit  func(*Media)
		field string
	}{
		{func(m *Media) { m.StoragePath = "" }, "media.storage_path"},
		{func(m *Media) { m.MaxUploadSize = 10 }, "media.max_upload_size"},
		{func(m *Media) { m.MaxImagePixels = 0 }, "media.max_image_pixels"},
		{func(m *Media) { m.MaxPendingUploads = 0 }, "media.max_pending_uploads"},
		{func(m *Media) { m.PendingUploadLifetime = 0 }, "media.pending_upload_lifetime"},
		{func(m *Media) { m.UploadsPerMinute = 0 }, "media.uploads_per_minute"},
		{func(m *Media) { m.ThumbnailSizes = []ThumbnailSize{{0, 10, "crop"}} }, "media.thumbnail_sizes[0]"},
		{func(m *Media) { m.ThumbnailSizes = []ThumbnailSize{{10, 10, "stretch"}} }, "media.thumbnail_sizes[0].method"},
		{func(m *Media) { m.URLPreview.BlockedIPRanges = []string{"10.0.0.0"} }, "media.url_preview.blocked_ip_ranges[0]"},
		{func(m *Media) { m.URLPreview.MaxPageSize = 1 }, "media.url_preview.max_page_size"},
	}
	for _, c := range cases {
		cfg := Default("example.org")
		c.edit(&cfg.Media)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: error = %v", c.field, err)
		}
	}
	parsed, err := Parse([]byte("media:\n  max_upload_size: 2048\n  url_preview:\n    enabled: true\n    blocked_ip_ranges: [\"100.0.0.0/8\"]\n"))
	if err != nil || parsed.Media.MaxUploadSize != 2048 || !parsed.Media.URLPreview.Enabled || parsed.Media.URLPreview.MaxPageSize != 1<<20 {
		t.Fatalf("parse: %+v, %v", parsed.Media, err)
	}
}
