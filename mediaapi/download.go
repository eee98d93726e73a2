package mediaapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/plexus-chat/plexus/internal/httputil"
)

const (
	defaultWait = 20 * time.Second
	// maxWait caps timeout_ms, so a download cannot hold a connection for long.
	maxWait = 60 * time.Second
)

// waitParam reads timeout_ms (default 20 s, capped at maxWait).
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("timeout_ms")
	if v == "" {
		return defaultWait, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, httputil.InvalidParam("timeout_ms must be a non-negative integer")
	}
	return min(time.Duration(ms)*time.Millisecond, maxWait), nil
}

func boolParam(r *http.Request, name string, def bool) (bool, error) {
	switch r.URL.Query().Get(name) {
	case "":
		return def, nil
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, httputil.InvalidParam("%s must be true or false", name)
}

func notYetUploaded() error {
	return &httputil.Error{Status: http.StatusGatewayTimeout, Code: "M_NOT_YET_UPLOADED", Message: "Content has not yet been uploaded"}
}

// localMedia returns our media with content, waiting up to wait for a
// pending upload. Unknown, expired and quarantined media are not found.
func (m *MediaAPI) localMedia(ctx context.Context, id string, wait time.Duration) (*Media, error) {
	med, err := m.store.media(ctx, m.serverName, id)
	if err != nil {
		return nil, err
	}
	if med != nil && med.Pending() && wait > 0 {
		ch, release := m.uploads.wait(id)
		defer release()
		// Read again: the upload may have finished before we listened.
		if med, err = m.store.media(ctx, m.serverName, id); err != nil {
			return nil, err
		}
		if med != nil && med.Pending() {
			timer := time.NewTimer(min(wait, time.Until(time.UnixMilli(med.ExpiresTS))))
			select {
			case <-ch:
			case <-timer.C:
			case <-ctx.Done():
			}
			timer.Stop()
			if med, err = m.store.media(ctx, m.serverName, id); err != nil {
				return nil, err
			}
		}
	}
	if med == nil || med.Quarantined || (med.Pending() && med.ExpiresTS <= time.Now().UnixMilli()) {
		return nil, httputil.NotFound("Media not found")
	}
	if med.Pending() {
		return nil, notYetUploaded()
	}
	return med, nil
}

// mediaFor finds the media a request names, ours or fetched from its
// server.
func (m *MediaAPI) mediaFor(r *http.Request, server, id string) (*Media, error) {
	if err := checkMediaRef(server, id); err != nil {
		return nil, err
	}
	wait, err := waitParam(r)
	if err != nil {
		return nil, err
	}
	if _, err := boolParam(r, "allow_redirect", false); err != nil {
		return nil, err
	}
	if server == m.serverName {
		return m.localMedia(r.Context(), id, wait)
	}
	allowRemote, err := boolParam(r, "allow_remote", true)
	if err != nil {
		return nil, err
	}
	if !allowRemote {
		return nil, httputil.NotFound("Media not found")
	}
	return m.remoteMedia(r.Context(), server, id, wait)
}

// download serves a file: GET …/download/{serverName}/{mediaId}[/{fileName}].
// We always serve the content ourselves; allow_redirect only permits a
// redirect, which we never need.
func (m *MediaAPI) download(w http.ResponseWriter, r *http.Request) error {
	vars := httputil.Vars(r)
	med, err := m.mediaFor(r, vars["serverName"], vars["mediaId"])
	if err != nil {
		return err
	}
	name := med.UploadName
	if n, ok := vars["fileName"]; ok {
		name = n
	}
	return m.serveFile(w, r, med.SHA256, med.ContentType, name)
}

// serveFile writes a stored file with the safe content headers. Range
// requests work (http.ServeContent).
func (m *MediaAPI) serveFile(w http.ResponseWriter, r *http.Request, sha, contentType, name string) error {
	f, err := m.files.open(sha)
	if errors.Is(err, os.ErrNotExist) {
		m.logger.WithField("sha256", sha).Error("media file missing from storage")
		return httputil.NotFound("Media not found")
	}
	if err != nil {
		return err
	}
	defer f.Close()
	setContentHeaders(w.Header(), contentType, name)
	http.ServeContent(w, r, "", time.Time{}, f)
	return nil
}

// copyFile streams a stored file to w (federation multipart parts).
func (m *MediaAPI) copyFile(w io.Writer, sha string) error {
	f, err := m.files.open(sha)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
