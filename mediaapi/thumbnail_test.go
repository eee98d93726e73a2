package mediaapi_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image/gif"
	"net/http"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func thumbnailURL(s *testserver.Server, authed bool, path string, w, h int, method string) string {
	prefix := "/_matrix/media/v3"
	if authed {
		prefix = "/_matrix/client/v1/media"
	}
	return fmt.Sprintf("%s%s/thumbnail/%s?width=%d&height=%d&method=%s", s.URL, prefix, path, w, h, method)
}

func TestThumbnailsOfEachFormatAndMethod(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "password1234")
	src := gradient(400, 300)
	sources := []struct {
		name, contentType string
		data              []byte
		w, h              int
		wantFormat        string
	}{
		{"png", "image/png", encodePNG(t, src), 400, 300, "png"},
		{"jpeg", "image/jpeg", encodeJPEG(t, src), 400, 300, "jpeg"},
		{"gif", "image/gif", encodeGIF(t, gradient(200, 100), 1), 200, 100, "png"},
		{"webp", "image/webp", tinyWebP, 64, 48, "png"},
	}
	for _, src := range sources {
		t.Run(src.name, func(t *testing.T) {
			path := mxcPath(t, upload(t, s, alice.AccessToken, src.contentType, "", src.data))
			cases := []struct {
				w, h         int
				method       string
				wantW, wantH int
			}{
				{32, 32, "crop", 32, 32},
				{96, 96, "crop", 96, 96},
				{50, 50, "crop", 96, 96},      // served from 96x96, never smaller than asked
				{320, 240, "scale", 320, 240}, // the aspect is kept
				{100, 100, "scale", 320, 240}, // served from 320x240 scale
			}
			for _, c := range cases {
				wantW, wantH, wantFormat := c.wantW, c.wantH, src.wantFormat
				// Scaled: fits the size the request is served from, aspect kept.
				if c.method == "scale" {
					f := min(float64(c.wantW)/float64(src.w), float64(c.wantH)/float64(src.h), 1)
					wantW, wantH = int(float64(src.w)*f+0.5), int(float64(src.h)*f+0.5)
				}
				// Never upscaled: an image no larger than asked comes back as it is.
				if src.w <= c.wantW && src.h <= c.wantH {
					wantW, wantH, wantFormat = src.w, src.h, map[string]string{"image/webp": "webp", "image/gif": "gif"}[src.contentType]
				}
				for _, authed := range []bool{true, false} {
					token := ""
					if authed {
						token = alice.AccessToken
					}
					r := do(t, "GET", thumbnailURL(s, authed, path, c.w, c.h, c.method), token, "", nil)
					if r.Status != http.StatusOK {
						t.Fatalf("%dx%d %s: %d %s", c.w, c.h, c.method, r.Status, r.Body)
					}
					gw, gh, format := decodeSize(t, r.Body)
					if gw != wantW || gh != wantH || format != wantFormat {
						t.Errorf("%dx%d %s (authed %v): got %dx%d %s, want %dx%d %s", c.w, c.h, c.method, authed, gw, gh, format, wantW, wantH, wantFormat)
					}
				}
			}
			// Larger than the image: the original.
			r := do(t, "GET", thumbnailURL(s, true, path, 2000, 2000, "scale"), alice.AccessToken, "", nil)
			if r.Status != http.StatusOK || !bytes.Equal(r.Body, src.data) {
				t.Errorf("thumbnail larger than the image: %d, %d bytes (original %d)", r.Status, len(r.Body), len(src.data))
			}
		})
	}
	// The authenticated thumbnail needs a token.
	path := mxcPath(t, upload(t, s, alice.AccessToken, "image/png", "", encodePNG(t, src)))
	if r := do(t, "GET", thumbnailURL(s, true, path, 32, 32, "crop"), "", "", nil); r.Status != http.StatusUnauthorized {
		t.Errorf("authed thumbnail without token: %d", r.Status)
	}
	// Bad parameters.
	for _, q := range []string{"width=0&height=10", "width=10", "width=10&height=10&method=stretch", "width=x&height=1"} {
		if r := do(t, "GET", s.URL+"/_matrix/client/v1/media/thumbnail/"+path+"?"+q, alice.AccessToken, "", nil); r.Status != http.StatusBadRequest {
			t.Errorf("thumbnail ?%s: %d %s", q, r.Status, r.Body)
		}
	}
	// Not an image.
	text := mxcPath(t, upload(t, s, alice.AccessToken, "text/plain", "", []byte("hi")))
	if r := do(t, "GET", thumbnailURL(s, true, text, 32, 32, "crop"), alice.AccessToken, "", nil); r.Status != http.StatusBadRequest {
		t.Errorf("thumbnail of text: %d %s", r.Status, r.Body)
	}
}

func TestAnimatedGIFThumbnail(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "password1234")
	path := mxcPath(t, upload(t, s, alice.AccessToken, "image/gif", "", encodeGIF(t, gradient(200, 100), 3)))
	r := do(t, "GET", thumbnailURL(s, true, path, 96, 96, "crop")+"&animated=true", alice.AccessToken, "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("animated thumbnail: %d %s", r.Status, r.Body)
	}
	g, err := gif.DecodeAll(bytes.NewReader(r.Body))
	if err != nil {
		t.Fatalf("animated thumbnail is not a GIF: %v", err)
	}
	if len(g.Image) != 3 || g.Config.Width != 96 || g.Config.Height != 96 {
		t.Fatalf("animated thumbnail: %d frames of %dx%d", len(g.Image), g.Config.Width, g.Config.Height)
	}
	// animated=false must not animate.
	r = do(t, "GET", thumbnailURL(s, true, path, 96, 96, "crop")+"&animated=false", alice.AccessToken, "", nil)
	if _, _, format := decodeSize(t, r.Body); format != "png" {
		t.Fatalf("still thumbnail is %s", format)
	}
}

// pngHeader is a PNG signature and an IHDR chunk claiming w×h pixels,
// followed by nothing: a decoder that trusted it would allocate w×h×4
// bytes.
func pngHeader(w, h uint32) []byte {
	var b bytes.Buffer
	b.Write([]byte("\x89PNG\r\n\x1a\n"))
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 6 // 8-bit RGBA
	chunk := append([]byte("IHDR"), ihdr...)
	binary.Write(&b, binary.BigEndian, uint32(len(ihdr)))
	b.Write(chunk)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

func TestDecompressionBombIsRefused(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "password1234")
	path := mxcPath(t, upload(t, s, alice.AccessToken, "image/png", "", pngHeader(100000, 100000)))
	for _, method := range []string{"crop", "scale"} {
		r := do(t, "GET", thumbnailURL(s, true, path, 96, 96, method), alice.AccessToken, "", nil)
		if r.Status != http.StatusRequestEntityTooLarge || r.errcode() != "M_TOO_LARGE" {
			t.Fatalf("bomb thumbnail (%s): %d %s", method, r.Status, r.Body)
		}
	}
	// Within the configured pixel limit but not a real image: a clean 400.
	small := mxcPath(t, upload(t, s, alice.AccessToken, "image/png", "", pngHeader(500, 500)))
	if r := do(t, "GET", thumbnailURL(s, true, small, 96, 96, "crop"), alice.AccessToken, "", nil); r.Status != http.StatusBadRequest {
		t.Fatalf("truncated PNG: %d %s", r.Status, r.Body)
	}
}

func TestThumbnailsArePregeneratedOnUpload(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) {
		c.Media.ThumbnailSizes = []config.ThumbnailSize{{Width: 32, Height: 32, Method: "crop"}, {Width: 64, Height: 48, Method: "scale"}}
	})
	alice := s.Register("alice", "password1234")
	uri := upload(t, s, alice.AccessToken, "image/png", "", encodePNG(t, gradient(200, 150)))
	_, id, _ := bytes.Cut([]byte(mxcPath(t, uri)), []byte("/"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := s.Server.DB.Reader().QueryRowContext(t.Context(), "SELECT COUNT(*) FROM mediaapi_thumbnails WHERE media_id = $1", string(id)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d thumbnails made in the background, want 2", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
