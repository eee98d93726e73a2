package mediaapi_test

import (
	"context"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// fedGet asks a for path with a request signed by b and returns the two
// multipart parts' headers and bodies.
func fedGet(t *testing.T, from, to *testserver.Server, path string) (int, []http.Header, [][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := from.Server.Federation.DoSigned(ctx, "GET", spec.ServerName(to.ServerName()), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Logf("%s: %d %s", path, resp.StatusCode, body)
		return resp.StatusCode, nil, nil
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("%s: Content-Type %q", path, resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	var headers []http.Header
	var bodies [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, _ := io.ReadAll(p)
		headers = append(headers, http.Header(p.Header))
		bodies = append(bodies, b)
	}
	return resp.StatusCode, headers, bodies
}

func TestFederationMediaEndpoints(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "password1234")
	body := encodePNG(t, gradient(300, 200))
	id := strings.SplitN(mxcPath(t, upload(t, a, alice.AccessToken, "image/png", "x.png", body)), "/", 2)[1]

	status, headers, parts := fedGet(t, b, a, "/_matrix/federation/v1/media/download/"+id)
	if status != 200 || len(parts) != 2 {
		t.Fatalf("download: %d, %d parts", status, len(parts))
	}
	if headers[0].Get("Content-Type") != "application/json" || string(parts[0]) != "{}" {
		t.Errorf("metadata part: %v %q", headers[0], parts[0])
	}
	if headers[1].Get("Content-Type") != "image/png" || string(parts[1]) != string(body) {
		t.Errorf("content part: %v, %d bytes", headers[1], len(parts[1]))
	}

	status, _, parts = fedGet(t, b, a, "/_matrix/federation/v1/media/thumbnail/"+id+"?width=32&height=32&method=crop")
	if status != 200 || len(parts) != 2 {
		t.Fatalf("thumbnail: %d, %d parts", status, len(parts))
	}
	if w, h, _ := decodeSize(t, parts[1]); w != 32 || h != 32 {
		t.Errorf("thumbnail is %dx%d", w, h)
	}
	if status, _, _ := fedGet(t, b, a, "/_matrix/federation/v1/media/download/unknownMedia"); status != 404 {
		t.Errorf("unknown media: %d", status)
	}
	// Pending media is not yet uploaded.
	created := a.MustOK("POST", "/_matrix/media/v1/create", alice.AccessToken, struct{}{})
	pending := strings.SplitN(mxcPath(t, created.Get("content_uri").String()), "/", 2)[1]
	if status, _, _ := fedGet(t, b, a, "/_matrix/federation/v1/media/download/"+pending+"?timeout_ms=0"); status != http.StatusGatewayTimeout {
		t.Errorf("pending media: %d", status)
	}
}
