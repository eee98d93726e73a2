package mediaapi

import (
	"mime/multipart"
	"net/http"
	"net/textproto"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// FederationHandler is federationapi.Handler: a request whose X-Matrix
// signature verified.
type FederationHandler = func(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error

// FederationRoutes lists the federation endpoints serving our media to
// other servers, for registration with federationapi's Handle.
func (m *MediaAPI) FederationRoutes() map[string]FederationHandler {
	return map[string]FederationHandler{
		"/_matrix/federation/v1/media/download/{mediaId}":  m.federationDownload,
		"/_matrix/federation/v1/media/thumbnail/{mediaId}": m.federationThumbnail,
	}
}

// federationDownload is GET /_matrix/federation/v1/media/download/{mediaId}:
// our own media only, as multipart/mixed (metadata, then content).
func (m *MediaAPI) federationDownload(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, _ spec.ServerName) error {
	med, err := m.localForFederation(r)
	if err != nil {
		return err
	}
	return m.writeMultipart(w, med.SHA256, med.ContentType, med.UploadName)
}

// federationThumbnail is GET /_matrix/federation/v1/media/thumbnail/{mediaId}.
func (m *MediaAPI) federationThumbnail(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, _ spec.ServerName) error {
	req, err := parseThumbRequest(r)
	if err != nil {
		return err
	}
	med, err := m.localForFederation(r)
	if err != nil {
		return err
	}
	sha, contentType, err := m.thumbnailFor(r.Context(), med, req)
	if err != nil {
		return err
	}
	return m.writeMultipart(w, sha, contentType, "thumbnail")
}

func (m *MediaAPI) localForFederation(r *http.Request) (*Media, error) {
	id := httputil.Vars(r)["mediaId"]
	if !validMediaID.MatchString(id) {
		return nil, httputil.NotFound("Invalid media ID")
	}
	wait, err := waitParam(r)
	if err != nil {
		return nil, err
	}
	return m.localMedia(r.Context(), id, wait)
}

// writeMultipart writes the spec's two parts: JSON metadata, then the file.
func (m *MediaAPI) writeMultipart(w http.ResponseWriter, sha, contentType, name string) error {
	f, err := m.files.open(sha)
	if err != nil {
		return httputil.NotFound("Media not found")
	}
	f.Close()
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err != nil {
		return nil
	}
	_, _ = meta.Write([]byte("{}"))
	h := http.Header{}
	setContentHeaders(h, contentType, name)
	part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": h["Content-Type"], "Content-Disposition": h["Content-Disposition"]})
	if err != nil {
		return nil
	}
	if err := m.copyFile(part, sha); err != nil {
		// Headers are gone; the broken multipart tells the other server.
		m.logger.WithError(err).Warn("serve media over federation")
		return nil
	}
	_ = mw.Close()
	return nil
}
