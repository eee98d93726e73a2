package mediaapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestRemoteDownloadBetweenFederatedServers(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password1234")
	bob := b.Register("bob", "password1234")
	body := encodePNG(t, gradient(300, 200))
	path := mxcPath(t, upload(t, a, alice.AccessToken, "image/png", "pic.png", body))
	id := strings.SplitN(path, "/", 2)[1]

	// A thumbnail first: b fetches a's thumbnail, not the whole file.
	r := do(t, "GET", thumbnailURL(b, true, path, 96, 96, "crop"), bob.AccessToken, "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("remote thumbnail: %d %s", r.Status, r.Body)
	}
	if w, h, _ := decodeSize(t, r.Body); w != 96 || h != 96 {
		t.Errorf("remote thumbnail is %dx%d", w, h)
	}
	var sha string
	var thumbs int
	db := b.Server.DB.Reader()
	if err := db.QueryRowContext(t.Context(), "SELECT sha256 FROM mediaapi_media WHERE media_id = $1", id).Scan(&sha); err != nil || sha != "" {
		t.Errorf("b holds the original after a thumbnail request (sha256 %q, %v)", sha, err)
	}
	if err := db.QueryRowContext(t.Context(), "SELECT COUNT(*) FROM mediaapi_thumbnails WHERE media_id = $1", id).Scan(&thumbs); err != nil || thumbs != 1 {
		t.Errorf("b cached %d thumbnails (%v), want 1", thumbs, err)
	}

	r = do(t, "GET", b.URL+"/_matrix/client/v1/media/download/"+path, bob.AccessToken, "", nil)
	if r.Status != http.StatusOK || !bytes.Equal(r.Body, body) {
		t.Fatalf("remote download via b: %d (%d bytes)", r.Status, len(r.Body))
	}
	if r.Header.Get("Content-Type") != "image/png" || !strings.Contains(r.Header.Get("Content-Disposition"), "pic.png") {
		t.Errorf("remote download headers: %v", r.Header)
	}
	// With the original cached, other sizes are made from it here.
	r = do(t, "GET", thumbnailURL(b, false, path, 320, 240, "scale"), "", "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("remote thumbnail from the cached original: %d %s", r.Status, r.Body)
	}
	if w, h, _ := decodeSize(t, r.Body); w != 300 || h != 200 {
		t.Errorf("scaled remote thumbnail is %dx%d, want the 300x200 original", w, h)
	}
	// allow_remote=false does not fetch; unknown remote media is 404.
	other := mxcPath(t, upload(t, a, alice.AccessToken, "text/plain", "", []byte("x")))
	if r := do(t, "GET", b.URL+"/_matrix/media/v3/download/"+other+"?allow_remote=false", "", "", nil); r.Status != http.StatusNotFound {
		t.Errorf("allow_remote=false: %d %s", r.Status, r.Body)
	}
	b.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v1/media/download/"+a.ServerName()+"/doesNotExist", bob.AccessToken, nil)

	// The federation endpoints need a signed request.
	resp, err := http.Get(a.URL + "/_matrix/federation/v1/media/download/" + strings.SplitN(path, "/", 2)[1])
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unsigned federation download: %d", resp.StatusCode)
	}
}

// fakeOrigin is a TLS server trusted by the test CA standing in for
// another homeserver's media endpoints; it counts the requests it gets.
type fakeOrigin struct {
	srv        *httptest.Server
	fedHits    atomic.Int32
	legacyHits atomic.Int32
}

func (f *fakeOrigin) name() string { return strings.TrimPrefix(f.srv.URL, "https://") }

func newFakeOrigin(t *testing.T, ca *testserver.CA, handler func(f *fakeOrigin, w http.ResponseWriter, r *http.Request)) *fakeOrigin {
	f := &fakeOrigin{}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/download/"):
			f.fedHits.Add(1)
		case strings.HasPrefix(r.URL.Path, "/_matrix/media/v3/download/"):
			f.legacyHits.Add(1)
		}
		handler(f, w, r)
	}))
	certFile, keyFile := ca.Issue(t, "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func writeMultipart(w http.ResponseWriter, contentType string, body []byte, location string) {
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	meta, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	meta.Write([]byte("{}"))
	h := textproto.MIMEHeader{}
	if location != "" {
		h.Set("Location", location)
	} else {
		h.Set("Content-Type", contentType)
	}
	part, _ := mw.CreatePart(h)
	part.Write(body)
	mw.Close()
}

func TestConcurrentRemoteFetchesAreCoalesced(t *testing.T) {
	ca := testserver.NewCA(t)
	b := testserver.NewTLS(t, ca)
	bob := b.Register("bob", "password1234")
	release := make(chan struct{})
	origin := newFakeOrigin(t, ca, func(f *fakeOrigin, w http.ResponseWriter, r *http.Request) {
		<-release // hold the answer until every download is waiting
		writeMultipart(w, "text/plain", []byte("shared content"), "")
	})
	const n = 8
	var wg sync.WaitGroup
	results := make([]*rawResponse, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = do(t, "GET", b.URL+"/_matrix/client/v1/media/download/"+origin.name()+"/shared", bob.AccessToken, "", nil)
		}()
	}
	// Wait until the fetch reached the origin, then give the other
	// downloads time to join it before answering.
	deadline := time.Now().Add(10 * time.Second)
	for origin.fedHits.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(release)
	wg.Wait()
	for i, r := range results {
		if r.Status != http.StatusOK || string(r.Body) != "shared content" {
			t.Fatalf("download %d: %d %s", i, r.Status, r.Body)
		}
	}
	if hits := origin.fedHits.Load(); hits != 1 {
		t.Fatalf("origin was asked %d times for one file, want 1", hits)
	}
	// Later downloads come from the cache.
	if r := do(t, "GET", b.URL+"/_matrix/media/v3/download/"+origin.name()+"/shared", "", "", nil); r.Status != http.StatusOK || origin.fedHits.Load() != 1 {
		t.Fatalf("cached download: %d, origin hits %d", r.Status, origin.fedHits.Load())
	}
}

func TestRemoteFetchFallsBackToLegacyEndpoint(t *testing.T) {
	ca := testserver.NewCA(t)
	b := testserver.NewTLS(t, ca)
	bob := b.Register("bob", "password1234")
	origin := newFakeOrigin(t, ca, func(f *fakeOrigin, w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/_matrix/federation/") {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
			return
		}
		if r.URL.Query().Get("allow_remote") != "false" {
			t.Errorf("legacy fetch without allow_remote=false: %s", r.URL)
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Disposition", `attachment; filename="old.txt"`)
		io.WriteString(w, "from an old server")
	})
	r := do(t, "GET", b.URL+"/_matrix/client/v1/media/download/"+origin.name()+"/legacy", bob.AccessToken, "", nil)
	if r.Status != http.StatusOK || string(r.Body) != "from an old server" {
		t.Fatalf("download: %d %s", r.Status, r.Body)
	}
	if !strings.Contains(r.Header.Get("Content-Disposition"), "old.txt") {
		t.Errorf("file name lost: %q", r.Header.Get("Content-Disposition"))
	}
	if origin.fedHits.Load() != 1 || origin.legacyHits.Load() != 1 {
		t.Fatalf("hits: federation %d, legacy %d", origin.fedHits.Load(), origin.legacyHits.Load())
	}
}

func TestRemoteThumbnailFallsBackToTheOriginal(t *testing.T) {
	ca := testserver.NewCA(t)
	b := testserver.NewTLS(t, ca)
	bob := b.Register("bob", "password1234")
	img := encodePNG(t, gradient(200, 160))
	var thumbHits atomic.Int32
	origin := newFakeOrigin(t, ca, func(f *fakeOrigin, w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/media/thumbnail/") {
			thumbHits.Add(1)
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
			return
		}
		writeMultipart(w, "image/png", img, "")
	})
	r := do(t, "GET", thumbnailURL(b, true, origin.name()+"/pic", 32, 32, "crop"), bob.AccessToken, "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("thumbnail: %d %s", r.Status, r.Body)
	}
	if w, h, _ := decodeSize(t, r.Body); w != 32 || h != 32 {
		t.Fatalf("thumbnail is %dx%d", w, h)
	}
	if thumbHits.Load() != 1 || origin.fedHits.Load() != 1 {
		t.Fatalf("origin hits: thumbnail %d, download %d", thumbHits.Load(), origin.fedHits.Load())
	}
}

func TestMissingRemoteMediaIsRememberedBriefly(t *testing.T) {
	ca := testserver.NewCA(t)
	b := testserver.NewTLS(t, ca)
	bob := b.Register("bob", "password1234")
	origin := newFakeOrigin(t, ca, func(f *fakeOrigin, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"errcode":"M_NOT_FOUND","error":"Not found"}`)
	})
	for range 3 {
		b.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v1/media/download/"+origin.name()+"/gone", bob.AccessToken, nil)
	}
	if hits := origin.fedHits.Load() + origin.legacyHits.Load(); hits != 1 {
		t.Fatalf("origin asked %d times, want 1", hits)
	}
}

func TestRemoteRedirectToInternalAddressIsRefused(t *testing.T) {
	ca := testserver.NewCA(t)
	b := testserver.NewTLS(t, ca)
	bob := b.Register("bob", "password1234")
	var internalHits atomic.Int32
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1)
		io.WriteString(w, "secret")
	}))
	t.Cleanup(internal.Close)
	origin := newFakeOrigin(t, ca, func(f *fakeOrigin, w http.ResponseWriter, r *http.Request) {
		writeMultipart(w, "", nil, internal.URL+"/metadata")
	})
	r := do(t, "GET", b.URL+"/_matrix/client/v1/media/download/"+origin.name()+"/redirected", bob.AccessToken, "", nil)
	if r.Status != http.StatusBadGateway || internalHits.Load() != 0 {
		t.Fatalf("redirect to loopback: %d %s, internal server hit %d times", r.Status, r.Body, internalHits.Load())
	}
}

func TestRemoteFileLargerThanLimitIsRefused(t *testing.T) {
	ca := testserver.NewCA(t)
	b := testserver.NewTLS(t, ca, func(c *config.Config) { c.Media.MaxUploadSize = 4096 })
	bob := b.Register("bob", "password1234")
	origin := newFakeOrigin(t, ca, func(f *fakeOrigin, w http.ResponseWriter, r *http.Request) {
		writeMultipart(w, "application/octet-stream", make([]byte, 10000), "")
	})
	r := do(t, "GET", b.URL+"/_matrix/client/v1/media/download/"+origin.name()+"/big", bob.AccessToken, "", nil)
	if r.Status != http.StatusBadGateway || r.errcode() != "M_TOO_LARGE" {
		t.Fatalf("oversized remote file: %d %s", r.Status, r.Body)
	}
}

// TestAvatarAcrossServersWithMautrix drives the media API with a real
// client library: alice sets an avatar on her server, bob on the other
// server reads her profile and downloads the avatar through his own.
func TestAvatarAcrossServersWithMautrix(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password1234")
	bob := b.Register("bob", "password1234")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	ac, err := mautrix.NewClient(a.URL, id.UserID(alice.UserID), alice.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	avatar := encodePNG(t, gradient(128, 128))
	up, err := ac.UploadBytesWithName(ctx, avatar, "image/png", "avatar.png")
	if err != nil {
		t.Fatalf("mautrix upload: %v", err)
	}
	if err := ac.SetAvatarURL(ctx, up.ContentURI); err != nil {
		t.Fatalf("mautrix set avatar: %v", err)
	}

	bc, err := mautrix.NewClient(b.URL, id.UserID(bob.UserID), bob.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	profile, err := bc.GetProfile(ctx, id.UserID(alice.UserID))
	if err != nil {
		t.Fatalf("mautrix profile over federation: %v", err)
	}
	if profile.AvatarURL != up.ContentURI {
		t.Fatalf("avatar_url %q, want %q", profile.AvatarURL, up.ContentURI)
	}
	got, err := bc.DownloadBytes(ctx, profile.AvatarURL)
	if err != nil {
		t.Fatalf("mautrix download via b: %v", err)
	}
	if !bytes.Equal(got, avatar) {
		t.Fatalf("avatar differs: %d bytes, want %d", len(got), len(avatar))
	}
	resp, err := bc.DownloadThumbnail(ctx, profile.AvatarURL, 32, 32, mautrix.DownloadThumbnailExtra{Method: "crop"})
	if err != nil {
		t.Fatalf("mautrix thumbnail via b: %v", err)
	}
	defer resp.Body.Close()
	thumb, _ := io.ReadAll(resp.Body)
	if w, h, _ := decodeSize(t, thumb); w != 32 || h != 32 {
		t.Fatalf("avatar thumbnail %dx%d", w, h)
	}
}
