package mediaapi

import (
	"errors"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/storage"
)

func userID(s *accounts.Session, server string) string { return "@" + s.Localpart + ":" + server }

// checkUploader refuses guests and applies the per-user upload limit.
func (m *MediaAPI) checkUploader(s *accounts.Session) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot upload media")
	}
	return m.uploadLimit.Check(s.Localpart)
}

// uploadMeta reads the content type and file name of an upload.
func uploadMeta(r *http.Request) (contentType, name string, err error) {
	contentType = strings.TrimSpace(r.Header.Get("Content-Type"))
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	if len(contentType) > 255 {
		return "", "", httputil.InvalidParam("Content-Type is too long")
	}
	if _, _, err := mime.ParseMediaType(contentType); err != nil {
		return "", "", httputil.InvalidParam("Content-Type is not a media type")
	}
	name = r.URL.Query().Get("filename")
	if len(name) > 255 || !utf8.ValidString(name) || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", "", httputil.InvalidParam("filename must be at most 255 bytes of UTF-8 without control characters")
	}
	return contentType, name, nil
}

// receive streams the request body into the file store.
func (m *MediaAPI) receive(r *http.Request) (sha string, size int64, err error) {
	if r.ContentLength > m.cfg.MaxUploadSize {
		return "", 0, m.tooLarge()
	}
	body := http.MaxBytesReader(nil, r.Body, m.cfg.MaxUploadSize+1)
	sha, size, err = m.files.write(body, m.cfg.MaxUploadSize)
	if errors.Is(err, errTooLarge) {
		return "", 0, m.tooLarge()
	}
	return sha, size, err
}

func (m *MediaAPI) tooLarge() error {
	return httputil.TooLarge("Cannot upload files larger than %d bytes", m.cfg.MaxUploadSize)
}

// upload is POST /_matrix/media/v3/upload.
func (m *MediaAPI) upload(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if err := m.checkUploader(s); err != nil {
		return err
	}
	contentType, name, err := uploadMeta(r)
	if err != nil {
		return err
	}
	sha, size, err := m.receive(r)
	if err != nil {
		return err
	}
	med := &Media{ServerName: m.serverName, Uploader: userID(s, m.serverName), ContentType: contentType,
		UploadName: name, Size: size, SHA256: sha, CreatedTS: storage.NowMillis()}
	for attempt := 0; ; attempt++ {
		med.MediaID = newMediaID()
		err = m.store.insertMedia(r.Context(), med)
		if !errors.Is(err, errMediaExists) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return err
	}
	m.pregenerateThumbnails(med)
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"content_uri": mxc(m.serverName, med.MediaID)})
	return nil
}

// create is POST /_matrix/media/v1/create: an ID now, the content later.
func (m *MediaAPI) create(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if err := m.checkUploader(s); err != nil {
		return err
	}
	now := storage.NowMillis()
	uploader := userID(s, m.serverName)
	n, err := m.store.pendingCount(r.Context(), uploader, now)
	if err != nil {
		return err
	}
	if n >= m.cfg.MaxPendingUploads {
		return &httputil.Error{Status: http.StatusTooManyRequests, Code: "M_LIMIT_EXCEEDED",
			Message: "Too many pending uploads; upload or wait for earlier ones to expire",
			Extra:   map[string]any{"retry_after_ms": 60_000}}
	}
	med := &Media{ServerName: m.serverName, Uploader: uploader, CreatedTS: now,
		ExpiresTS: now + time.Duration(m.cfg.PendingUploadLifetime).Milliseconds()}
	for attempt := 0; ; attempt++ {
		med.MediaID = newMediaID()
		err = m.store.insertMedia(r.Context(), med)
		if !errors.Is(err, errMediaExists) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"content_uri": mxc(m.serverName, med.MediaID), "unused_expires_at": med.ExpiresTS})
	return nil
}

// uploadPending is PUT /_matrix/media/v3/upload/{serverName}/{mediaId}.
func (m *MediaAPI) uploadPending(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if err := m.checkUploader(s); err != nil {
		return err
	}
	vars := httputil.Vars(r)
	server, id := vars["serverName"], vars["mediaId"]
	if err := checkMediaRef(server, id); err != nil {
		return err
	}
	if server != m.serverName {
		return httputil.NotFound("Media IDs of other servers cannot be uploaded to")
	}
	med, err := m.store.media(r.Context(), server, id)
	if err != nil {
		return err
	}
	now := storage.NowMillis()
	if med == nil || (med.Pending() && med.ExpiresTS <= now) {
		return httputil.NotFound("Unknown or expired media ID")
	}
	if med.Uploader != userID(s, m.serverName) {
		return httputil.Forbidden("This media ID was created by another user")
	}
	if !med.Pending() {
		return cannotOverwrite()
	}
	contentType, name, err := uploadMeta(r)
	if err != nil {
		return err
	}
	sha, size, err := m.receive(r)
	if err != nil {
		return err
	}
	ok, err := m.store.completePending(r.Context(), server, id, contentType, name, size, sha)
	if err != nil {
		return err
	}
	if !ok {
		// A concurrent upload finished first. Our file goes unless some
		// media shares its content.
		if free, err := m.store.unreferenced(r.Context(), sha); err == nil && free {
			_ = m.files.remove(sha)
		}
		return cannotOverwrite()
	}
	m.uploads.done(id)
	med.ContentType, med.UploadName, med.Size, med.SHA256 = contentType, name, size, sha
	m.pregenerateThumbnails(med)
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func cannotOverwrite() error {
	return &httputil.Error{Status: http.StatusConflict, Code: "M_CANNOT_OVERWRITE_MEDIA", Message: "Media already uploaded"}
}
