package mediaapi_test

import (
	"bytes"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// tinyWebP is a 64x48 lossless WebP of one colour, written by hand: a
// VP8L bitstream whose five prefix codes each have a single symbol, so
// every pixel costs no bits.
var tinyWebP = []byte{0x52, 0x49, 0x46, 0x46, 0x1a, 0x0, 0x0, 0x0, 0x57, 0x45, 0x42, 0x50, 0x56, 0x50, 0x38, 0x4c,
	0xd, 0x0, 0x0, 0x0, 0x2f, 0x3f, 0xc0, 0xb, 0x0, 0x28, 0x60, 0x41, 0xa, 0xdc, 0xff, 0x2, 0x0, 0x0}

// rawResponse is a response whose body is not JSON.
type rawResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r *rawResponse) errcode() string { return gjson.GetBytes(r.Body, "errcode").String() }

// do sends a request with a raw body and content type.
func do(t *testing.T, method, rawURL, token, contentType string, body []byte) *rawResponse {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, rawURL, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return &rawResponse{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// upload posts content and returns its mxc URI.
func upload(t *testing.T, s *testserver.Server, token, contentType, filename string, body []byte) string {
	t.Helper()
	u := s.URL + "/_matrix/media/v3/upload"
	if filename != "" {
		u += "?filename=" + url.QueryEscape(filename)
	}
	r := do(t, "POST", u, token, contentType, body)
	if r.Status != http.StatusOK {
		t.Fatalf("upload: %d %s", r.Status, r.Body)
	}
	uri := gjson.GetBytes(r.Body, "content_uri").String()
	if uri == "" {
		t.Fatalf("upload: no content_uri in %s", r.Body)
	}
	return uri
}

// mxcPath turns mxc://server/id into "server/id".
func mxcPath(t *testing.T, uri string) string {
	t.Helper()
	rest, ok := bytes.CutPrefix([]byte(uri), []byte("mxc://"))
	if !ok {
		t.Fatalf("%q is not an mxc URI", uri)
	}
	return string(rest)
}

func gradient(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	return img
}

func encodePNG(t *testing.T, img image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t *testing.T, img image.Image) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeGIF(t *testing.T, img image.Image, frames int) []byte {
	var b bytes.Buffer
	g := &gif.GIF{}
	for i := 0; i < frames; i++ {
		p := image.NewPaletted(img.Bounds(), []color.Color{color.Black, color.White, color.RGBA{uint8(40 * i), 0, 0, 255}})
		for y := 0; y < img.Bounds().Dy(); y++ {
			for x := 0; x < img.Bounds().Dx(); x++ {
				p.SetColorIndex(x, y, uint8((x/8+y/8+i)%3))
			}
		}
		g.Image = append(g.Image, p)
		g.Delay = append(g.Delay, 10)
	}
	if err := gif.EncodeAll(&b, g); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// decodeSize decodes an image and returns its size and format.
func decodeSize(t *testing.T, data []byte) (int, int, string) {
	t.Helper()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not an image (%d bytes): %v", len(data), err)
	}
	return cfg.Width, cfg.Height, format
}
