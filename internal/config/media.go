package config

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Media configures the content repository (mediaapi).
type Media struct {
	// StoragePath is the folder holding uploaded and cached files and
	// thumbnails, resolved against the data folder.
	StoragePath string `yaml:"storage_path"`
	// MaxUploadSize is the largest file accepted, in bytes, from clients
	// and from other servers.
	MaxUploadSize int64 `yaml:"max_upload_size"`
	// MaxImagePixels is the largest image (width × height) thumbnailed;
	// checked from the header before decoding.
	MaxImagePixels int64 `yaml:"max_image_pixels"`
	// MaxPendingUploads is how many created but not yet uploaded media IDs
	// (POST /media/v1/create) a user may hold at once.
	MaxPendingUploads int `yaml:"max_pending_uploads"`
	// PendingUploadLifetime is how long a created media ID waits for its
	// content before it expires.
	PendingUploadLifetime Duration `yaml:"pending_upload_lifetime"`
	// UploadsPerMinute and UploadBurst limit uploads per user (when
	// rate_limit.enabled).
	UploadsPerMinute float64 `yaml:"uploads_per_minute"`
	UploadBurst      int     `yaml:"upload_burst"`
	// ThumbnailSizes are made when an image is uploaded and are the sizes
	// thumbnail requests are served from.
	ThumbnailSizes []ThumbnailSize `yaml:"thumbnail_sizes"`
	URLPreview     URLPreview      `yaml:"url_preview"`
}

// ThumbnailSize is one thumbnail size: method is crop or scale.
type ThumbnailSize struct {
	Width  int    `yaml:"width"`
	Height int    `yaml:"height"`
	Method string `yaml:"method"`
}

// URLPreview configures GET /media/preview_url, which makes this server
// fetch URLs that users name.
type URLPreview struct {
	Enabled bool `yaml:"enabled"`
	// BlockedIPRanges are CIDR ranges never connected to, on top of the
	// always blocked loopback, private, link-local, unspecified and
	// multicast ranges.
	BlockedIPRanges []string `yaml:"blocked_ip_ranges"`
	// MaxPageSize is the most bytes of a page read.
	MaxPageSize int64 `yaml:"max_page_size"`
}

func defaultMedia() Media {
	return Media{
		StoragePath:           "media",
		MaxUploadSize:         50 << 20,
		MaxImagePixels:        32 << 20,
		MaxPendingUploads:     10,
		PendingUploadLifetime: Duration(24 * time.Hour),
		UploadsPerMinute:      30,
		UploadBurst:           20,
		// The sizes the spec recommends.
		ThumbnailSizes: []ThumbnailSize{
			{32, 32, "crop"}, {96, 96, "crop"},
			{320, 240, "scale"}, {640, 480, "scale"}, {800, 600, "scale"},
		},
		URLPreview: URLPreview{MaxPageSize: 1 << 20},
	}
}

func (c *Config) validateMedia() error {
	m := c.Media
	if m.StoragePath == "" {
		return errors.New("media.storage_path: set a folder")
	}
	if m.MaxUploadSize < 1024 {
		return fmt.Errorf("media.max_upload_size: %d bytes is too small (minimum 1024)", m.MaxUploadSize)
	}
	if m.MaxImagePixels < 1 {
		return errors.New("media.max_image_pixels: must be positive")
	}
	if m.MaxPendingUploads < 1 {
		return errors.New("media.max_pending_uploads: must be at least 1")
	}
	if m.PendingUploadLifetime < Duration(time.Minute) {
		return errors.New("media.pending_upload_lifetime: must be at least 1m")
	}
	if c.RateLimit.Enabled && (m.UploadsPerMinute <= 0 || m.UploadBurst <= 0) {
		return errors.New("media.uploads_per_minute and media.upload_burst: must be positive when rate_limit.enabled")
	}
	for i, s := range m.ThumbnailSizes {
		if s.Width < 1 || s.Height < 1 || s.Width > 4096 || s.Height > 4096 {
			return fmt.Errorf("media.thumbnail_sizes[%d]: %dx%d is outside 1..4096", i, s.Width, s.Height)
		}
		if s.Method != "crop" && s.Method != "scale" {
			return fmt.Errorf("media.thumbnail_sizes[%d].method: %q is not crop or scale", i, s.Method)
		}
	}
	for i, r := range m.URLPreview.BlockedIPRanges {
		if _, _, err := net.ParseCIDR(r); err != nil {
			return fmt.Errorf("media.url_preview.blocked_ip_ranges[%d]: %q is not a CIDR range", i, r)
		}
	}
	if m.URLPreview.MaxPageSize < 1024 {
		return errors.New("media.url_preview.max_page_size: must be at least 1024")
	}
	return nil
}
