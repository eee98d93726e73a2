package mediaapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/storage"
)

// remoteThumbnail answers a thumbnail request for another server's media
// with a thumbnail fetched from that server (GET
// /_matrix/federation/v1/media/thumbnail), cached like ours, so that
// showing a remote image does not need the whole file. ok is false when
// the request is better served from the original: we have it already, no
// configured size is large enough, or the server has no thumbnail
// endpoint.
func (m *MediaAPI) remoteThumbnail(r *http.Request, server, id string, req thumbRequest) (sha, contentType string, ok bool, err error) {
	if m.fed == nil {
		return "", "", false, nil
	}
	if allow, err := boolParam(r, "allow_remote", true); err != nil || !allow {
		return "", "", false, err
	}
	wait, err := waitParam(r)
	if err != nil {
		return "", "", false, err
	}
	ctx := r.Context()
	med, err := m.store.media(ctx, server, id)
	if err != nil {
		return "", "", false, err
	}
	if med != nil && med.Quarantined {
		return "", "", false, httputil.NotFound("Media not found")
	}
	if med != nil && !med.Pending() {
		return "", "", false, nil // the original is cached
	}
	size, ok := m.pickSize(req)
	if !ok {
		return "", "", false, nil
	}
	method := storedMethod(size.Method, req.animated)
	if t, err := m.findThumbnail(ctx, server, id, size.Width, size.Height, method); err != nil || t != nil {
		if t == nil {
			return "", "", false, err
		}
		return t.SHA256, t.ContentType, true, nil
	}
	key := fmt.Sprintf("thumb/%s/%s/%dx%d/%s", server, id, size.Width, size.Height, method)
	ch := make(chan fetchResult, 1)
	var thumb *Thumbnail
	go func() {
		v, err, _ := m.remote.do(key, func() (any, error) {
			return m.fetchRemoteThumbnail(server, id, size.Width, size.Height, size.Method, req.animated, wait)
		})
		thumb, _ = v.(*Thumbnail)
		ch <- fetchResult{err: err}
	}()
	select {
	case res := <-ch:
		err = res.err
	case <-ctx.Done():
		return "", "", false, ctx.Err()
	}
	var useOriginal *errUseLegacy
	switch {
	case errors.As(err, &useOriginal):
		return "", "", false, nil
	case err != nil:
		var merr *httputil.Error
		if errors.As(err, &merr) && (merr.Code == "M_NOT_FOUND" || merr.Code == "M_NOT_YET_UPLOADED") {
			return "", "", false, err
		}
		// Any other failure: try the whole file instead.
		m.logger.WithError(err).WithField("server", server).Debug("remote thumbnail failed; fetching the original")
		return "", "", false, nil
	}
	return thumb.SHA256, thumb.ContentType, true, nil
}

// findThumbnail returns a stored thumbnail, or nil.
func (m *MediaAPI) findThumbnail(ctx context.Context, server, id string, w, h int, method string) (*Thumbnail, error) {
	ts, err := m.store.thumbnails(ctx, server, id)
	if err != nil {
		return nil, err
	}
	for _, t := range ts {
		if t.Width == w && t.Height == h && t.Method == method {
			return &t, nil
		}
	}
	return nil, nil
}

// fetchRemoteThumbnail fetches one thumbnail size from the media's server
// and stores it. The media gets a row without content (no sha256) to hang
// the thumbnail on; fetching the original later fills it in.
func (m *MediaAPI) fetchRemoteThumbnail(server, id string, w, h int, method string, animated bool, wait time.Duration) (*Thumbnail, error) {
	ctx, cancel := context.WithTimeout(m.bg, remoteFetchTimeout)
	defer cancel()
	q := url.Values{}
	q.Set("width", strconv.Itoa(w))
	q.Set("height", strconv.Itoa(h))
	q.Set("method", method)
	q.Set("animated", strconv.FormatBool(animated))
	q.Set("timeout_ms", strconv.FormatInt(wait.Milliseconds(), 10))
	got, err := m.fetchMultipart(ctx, server, "/_matrix/federation/v1/media/thumbnail/"+url.PathEscape(id)+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	err = m.store.insertMedia(ctx, &Media{ServerName: server, MediaID: id, CreatedTS: storage.NowMillis()})
	if err != nil && !errors.Is(err, errMediaExists) {
		return nil, err
	}
	t := Thumbnail{Width: w, Height: h, Method: storedMethod(method, animated), ContentType: got.contentType, Size: got.size, SHA256: got.sha}
	if _, err := m.store.insertThumbnail(ctx, server, id, t); err != nil {
		return nil, err
	}
	return &t, nil
}
