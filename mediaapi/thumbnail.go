package mediaapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// thumbRequest is a parsed thumbnail request.
type thumbRequest struct {
	width, height int
	method        string
	animated      bool
}

func parseThumbRequest(r *http.Request) (thumbRequest, error) {
	q := r.URL.Query()
	var t thumbRequest
	for _, p := range []struct {
		name string
		dst  *int
	}{{"width", &t.width}, {"height", &t.height}} {
		v := q.Get(p.name)
		if v == "" {
			return t, httputil.MissingParam("%s is required", p.name)
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return t, httputil.InvalidParam("%s must be an integer from 1 to 10000", p.name)
		}
		*p.dst = n
	}
	t.method = q.Get("method")
	switch t.method {
	case "":
		t.method = "scale"
	case "crop", "scale":
	default:
		return t, httputil.InvalidParam("method must be crop or scale")
	}
	var err error
	t.animated, err = boolParam(r, "animated", false)
	return t, err
}

// thumbnail serves GET …/thumbnail/{serverName}/{mediaId}.
func (m *MediaAPI) thumbnail(w http.ResponseWriter, r *http.Request) error {
	req, err := parseThumbRequest(r)
	if err != nil {
		return err
	}
	vars := httputil.Vars(r)
	server, id := vars["serverName"], vars["mediaId"]
	if err := checkMediaRef(server, id); err != nil {
		return err
	}
	if server != m.serverName {
		// Another server's media: its thumbnail from there, unless we
		// have the original (then it is made here like ours).
		sha, contentType, ok, err := m.remoteThumbnail(r, server, id, req)
		if err != nil {
			return err
		}
		if ok {
			return m.serveFile(w, r, sha, contentType, "thumbnail")
		}
	}
	med, err := m.mediaFor(r, server, id)
	if err != nil {
		return err
	}
	sha, contentType, err := m.thumbnailFor(r.Context(), med, req)
	if err != nil {
		return err
	}
	return m.serveFile(w, r, sha, contentType, "thumbnail")
}

// pickSize is the configured size a request is served from: the smallest
// of its method at least as large as asked. ok is false when none is (the
// original is served, which is larger still).
func (m *MediaAPI) pickSize(req thumbRequest) (size config.ThumbnailSize, ok bool) {
	for _, s := range m.cfg.ThumbnailSizes {
		if s.Method != req.method || s.Width < req.width || s.Height < req.height {
			continue
		}
		if !ok || s.Width*s.Height < size.Width*size.Height {
			size, ok = s, true
		}
	}
	return size, ok
}

// thumbnailFor returns the file (hash and type) answering a thumbnail
// request: a stored thumbnail, one made now, or the original when it is
// no larger than asked.
func (m *MediaAPI) thumbnailFor(ctx context.Context, med *Media, req thumbRequest) (sha, contentType string, err error) {
	if _, base := servedContentType(med.ContentType); !thumbnailable[base] {
		return "", "", httputil.BadRequest("Thumbnails are only made of PNG, JPEG, GIF and WebP images")
	}
	f, err := m.files.open(med.SHA256)
	if err != nil {
		return "", "", err
	}
	srcW, srcH, format, err := imageSize(f)
	f.Close()
	if err != nil {
		return "", "", httputil.BadRequest("The content is not an image that can be thumbnailed")
	}
	if int64(srcW)*int64(srcH) > m.cfg.MaxImagePixels {
		return "", "", httputil.TooLarge("The image is too large to thumbnail")
	}
	size, ok := m.pickSize(req)
	// The original when it is no larger than asked, or than the size that
	// would be made (thumbnails are never upscaled).
	if !ok || (srcW <= req.width && srcH <= req.height) || (srcW <= size.Width && srcH <= size.Height) {
		return med.SHA256, med.ContentType, nil
	}
	animated := req.animated && format == "gif"
	t, err := m.makeAndStoreThumbnail(ctx, med, size, animated)
	if errors.Is(err, errImageTooLarge) {
		return "", "", httputil.TooLarge("The image is too large to thumbnail")
	}
	if errors.Is(err, errNotImage) {
		return "", "", httputil.BadRequest("The content is not an image that can be thumbnailed")
	}
	if err != nil {
		return "", "", err
	}
	return t.SHA256, t.ContentType, nil
}

// storedMethod names a stored thumbnail's method; animated ones are kept
// apart from still ones of the same size.
func storedMethod(method string, animated bool) string {
	if animated {
		return method + "-animated"
	}
	return method
}

// makeAndStoreThumbnail returns the stored thumbnail of med at size,
// making it if needed. Concurrent requests for one thumbnail make it once,
// and at most two are made at a time.
func (m *MediaAPI) makeAndStoreThumbnail(ctx context.Context, med *Media, size config.ThumbnailSize, animated bool) (Thumbnail, error) {
	method := storedMethod(size.Method, animated)
	find := func() (*Thumbnail, error) {
		ts, err := m.store.thumbnails(ctx, med.ServerName, med.MediaID)
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			if t.Width == size.Width && t.Height == size.Height && t.Method == method {
				return &t, nil
			}
		}
		return nil, nil
	}
	if t, err := find(); err != nil || t != nil {
		if t == nil {
			return Thumbnail{}, err
		}
		return *t, nil
	}
	key := fmt.Sprintf("%s/%s/%dx%d/%s", med.ServerName, med.MediaID, size.Width, size.Height, method)
	v, err, _ := m.thumbs.do(key, func() (any, error) {
		if t, err := find(); err != nil || t != nil {
			return t, err
		}
		select {
		case m.thumbSem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-m.thumbSem }()
		data, contentType, err := m.renderThumbnail(med.SHA256, size, animated)
		if err != nil {
			return nil, err
		}
		sha, n, err := m.files.write(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return nil, err
		}
		t := Thumbnail{Width: size.Width, Height: size.Height, Method: method, ContentType: contentType, Size: n, SHA256: sha}
		// Stored under a context of its own: waiters share this result
		// even if the first requester went away.
		ctx := context.WithoutCancel(ctx)
		inserted, err := m.store.insertThumbnail(ctx, med.ServerName, med.MediaID, t)
		if err != nil {
			return nil, err
		}
		if !inserted {
			if existing, err := find(); err != nil || existing != nil {
				return existing, err
			}
			// The media was deleted meanwhile: drop the new file too.
			if free, err := m.store.unreferenced(ctx, sha); err == nil && free {
				_ = m.files.remove(sha)
			}
			return nil, httputil.NotFound("Media not found")
		}
		return &t, nil
	})
	if err != nil {
		return Thumbnail{}, err
	}
	return *v.(*Thumbnail), nil
}

// renderThumbnail decodes (within the pixel limit) and resizes.
func (m *MediaAPI) renderThumbnail(sha string, size config.ThumbnailSize, animated bool) ([]byte, string, error) {
	f, err := m.files.open(sha)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	if animated {
		frames, err := countGIFFrames(f, 2)
		if err == nil && frames > 1 {
			if _, err := f.Seek(0, 0); err != nil {
				return nil, "", err
			}
			data, err := animatedGIFThumbnail(f, size.Width, size.Height, size.Method, m.cfg.MaxImagePixels)
			return data, "image/gif", err
		}
		if _, err := f.Seek(0, 0); err != nil {
			return nil, "", err
		}
	}
	img, format, err := decodeBounded(f, m.cfg.MaxImagePixels)
	if err != nil {
		return nil, "", err
	}
	return encodeThumbnail(makeThumbnail(img, size.Width, size.Height, size.Method), format)
}

// pregenerateThumbnails makes the configured sizes of a new image in the
// background, so that clients' first thumbnail requests are quick.
func (m *MediaAPI) pregenerateThumbnails(med *Media) {
	if _, base := servedContentType(med.ContentType); !thumbnailable[base] {
		return
	}
	m.background(func(ctx context.Context) {
		f, err := m.files.open(med.SHA256)
		if err != nil {
			return
		}
		w, h, _, err := imageSize(f)
		f.Close()
		if err != nil || int64(w)*int64(h) > m.cfg.MaxImagePixels {
			return
		}
		for _, s := range m.cfg.ThumbnailSizes {
			if ctx.Err() != nil {
				return
			}
			if w <= s.Width && h <= s.Height {
				continue // the original is served for this size
			}
			if _, err := m.makeAndStoreThumbnail(ctx, med, s, false); err != nil && ctx.Err() == nil {
				m.logger.WithError(err).WithField("media_id", med.MediaID).Warn("pre-generate thumbnail")
			}
		}
	})
}
