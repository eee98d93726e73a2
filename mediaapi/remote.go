package mediaapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/storage"
)

// remoteFetchTimeout bounds one fetch of a remote file.
const remoteFetchTimeout = 2 * time.Minute

// remoteMedia returns another server's media from our cache, fetching it
// first if needed. Concurrent requests for one file share one fetch.
func (m *MediaAPI) remoteMedia(ctx context.Context, server, id string, wait time.Duration) (*Media, error) {
	med, err := m.store.media(ctx, server, id)
	if err != nil {
		return nil, err
	}
	if med != nil && med.Quarantined {
		return nil, httputil.NotFound("Media not found")
	}
	if med != nil && !med.Pending() {
		return med, nil
	}
	if m.fed == nil {
		return nil, httputil.NotFound("Media of other servers is not available")
	}
	key := server + "/" + id
	if m.missing.has(key) {
		return nil, httputil.NotFound("Media not found")
	}
	ch := make(chan fetchResult, 1)
	go func() {
		// The fetch outlives any one request: others may be waiting for it.
		v, err, _ := m.remote.do(key, func() (any, error) {
			med, err := m.fetchRemote(server, id, wait)
			if isNotFound(err) {
				m.missing.add(key)
			}
			return med, err
		})
		med, _ := v.(*Media)
		ch <- fetchResult{med, err}
	}()
	select {
	case res := <-ch:
		return res.med, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type fetchResult struct {
	med *Media
	err error
}

// fetchRemote downloads a file from its server, first over the
// authenticated federation endpoint, else the legacy media endpoint, and
// stores it.
func (m *MediaAPI) fetchRemote(server, id string, wait time.Duration) (*Media, error) {
	ctx, cancel := context.WithTimeout(m.bg, remoteFetchTimeout)
	defer cancel()
	log := m.logger.WithField("server", server).WithField("media_id", id)
	got, err := m.fetchFederation(ctx, server, id, wait)
	var fallback *errUseLegacy
	if errors.As(err, &fallback) {
		log.WithField("status", fallback.status).Debug("federation media download refused; trying the legacy endpoint")
		got, err = m.fetchLegacy(ctx, server, id)
	}
	if err != nil {
		return nil, err
	}
	med := &Media{ServerName: server, MediaID: id, ContentType: got.contentType, UploadName: got.name,
		Size: got.size, SHA256: got.sha, CreatedTS: storage.NowMillis()}
	if err := m.store.upsertRemote(ctx, med); err != nil {
		return nil, err
	}
	return med, nil
}

// fetched is a remote file written to the store.
type fetched struct {
	sha, contentType, name string
	size                   int64
}

// errUseLegacy says the server does not serve authenticated media
// downloads, so the legacy endpoint is worth a try.
type errUseLegacy struct{ status int }

func (e *errUseLegacy) Error() string {
	return fmt.Sprintf("federation media download answered %d", e.status)
}

// remoteError turns a failed answer of another server into our error.
func remoteError(server string, resp *http.Response) error {
	var body struct {
		Errcode string `json:"errcode"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	switch {
	case resp.StatusCode == http.StatusNotFound && body.Errcode != "M_UNRECOGNIZED":
		return httputil.NotFound("Media not found")
	case body.Errcode == "M_NOT_YET_UPLOADED":
		return notYetUploaded()
	case body.Errcode == "M_TOO_LARGE":
		return &httputil.Error{Status: http.StatusBadGateway, Code: "M_TOO_LARGE", Message: "The remote file is too large"}
	}
	return &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: fmt.Sprintf("%s answered %d", server, resp.StatusCode)}
}

func (m *MediaAPI) fetchFederation(ctx context.Context, server, id string, wait time.Duration) (*fetched, error) {
	path := "/_matrix/federation/v1/media/download/" + url.PathEscape(id) + "?timeout_ms=" + strconv.FormatInt(wait.Milliseconds(), 10)
	return m.fetchMultipart(ctx, server, path)
}

// fetchMultipart GETs a federation media endpoint (download or thumbnail)
// and stores the content of its multipart answer.
func (m *MediaAPI) fetchMultipart(ctx context.Context, server, path string) (*fetched, error) {
	resp, err := m.fed.DoSigned(ctx, http.MethodGet, spec.ServerName(server), path, nil)
	if err != nil {
		return nil, &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: server + " cannot be reached"}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		switch resp.StatusCode {
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusMethodNotAllowed, http.StatusNotImplemented:
			return nil, &errUseLegacy{resp.StatusCode}
		case http.StatusNotFound:
			if err := remoteError(server, resp); err != nil && isNotFound(err) {
				return nil, err
			}
			return nil, &errUseLegacy{resp.StatusCode} // M_UNRECOGNIZED: an older server
		}
		return nil, remoteError(server, resp)
	}
	mediaType, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/mixed" || params["boundary"] == "" {
		return nil, badRemote(server, "a download that is not multipart/mixed")
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	// First part: JSON metadata (empty today); read and ignored.
	meta, err := mr.NextPart()
	if err != nil {
		return nil, badRemote(server, "a multipart download without parts")
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(meta, 64<<10)); err != nil {
		return nil, badRemote(server, "unreadable metadata")
	}
	part, err := mr.NextPart()
	if err != nil {
		return nil, badRemote(server, "a multipart download without content")
	}
	if loc := part.Header.Get("Location"); loc != "" {
		return m.fetchRedirect(ctx, server, loc)
	}
	return m.storeRemoteBody(part, server, part.Header.Get("Content-Type"), part.Header.Get("Content-Disposition"), -1)
}

func isNotFound(err error) bool {
	var e *httputil.Error
	return errors.As(err, &e) && e.Code == "M_NOT_FOUND"
}

func badRemote(server, what string) error {
	return &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: fmt.Sprintf("%s sent %s", server, what)}
}

// fetchRedirect follows the Location of a multipart answer with the
// guarded client: the URL is the other server's to choose, so it must not
// reach our internal network.
func (m *MediaAPI) fetchRedirect(ctx context.Context, server, loc string) (*fetched, error) {
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, badRemote(server, "a Location that is not an http(s) URL")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, badRemote(server, "a bad Location")
	}
	resp, err := m.redirectClient.Do(req)
	if err != nil {
		return nil, &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: "The media location given by " + server + " cannot be reached"}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, badRemote(server, fmt.Sprintf("a Location that answered %d", resp.StatusCode))
	}
	return m.storeRemoteBody(resp.Body, server, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"), resp.ContentLength)
}

// fetchLegacy uses GET /_matrix/media/v3/download with allow_remote=false.
func (m *MediaAPI) fetchLegacy(ctx context.Context, server, id string) (*fetched, error) {
	resp, err := m.fed.KeyClient().CreateMediaDownloadRequest(ctx, spec.ServerName(server), id)
	if err != nil {
		return nil, &httputil.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: server + " cannot be reached"}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, remoteError(server, resp)
	}
	return m.storeRemoteBody(resp.Body, server, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"), resp.ContentLength)
}

// storeRemoteBody streams a remote file to the store within the upload
// size limit.
func (m *MediaAPI) storeRemoteBody(body io.Reader, server, contentType, disposition string, length int64) (*fetched, error) {
	tooLarge := &httputil.Error{Status: http.StatusBadGateway, Code: "M_TOO_LARGE", Message: "The remote file is too large"}
	if length > m.cfg.MaxUploadSize {
		return nil, tooLarge
	}
	sha, size, err := m.files.write(body, m.cfg.MaxUploadSize)
	if errors.Is(err, errTooLarge) {
		return nil, tooLarge
	}
	if err != nil {
		return nil, badRemote(server, "a download that broke off")
	}
	if _, _, err := mime.ParseMediaType(contentType); err != nil || len(contentType) > 255 {
		contentType = "application/octet-stream"
	}
	return &fetched{sha: sha, size: size, contentType: contentType, name: dispositionName(disposition)}, nil
}

// dispositionName is the file name of a Content-Disposition header, or "".
func dispositionName(d string) string {
	if d == "" {
		return ""
	}
	_, params, err := mime.ParseMediaType(d)
	if err != nil {
		return ""
	}
	name := params["filename"] // mime decodes filename* into filename
	if len(name) > 255 {
		return ""
	}
	return name
}
