package mediaapi

import (
	"bytes"
	"image"
	"image/color"
	"image/gif"
	"strings"
	"testing"
)

func FuzzCountGIFFrames(f *testing.F) {
	var b bytes.Buffer
	p := image.NewPaletted(image.Rect(0, 0, 4, 4), color.Palette{color.Black, color.White})
	gif.EncodeAll(&b, &gif.GIF{Image: []*image.Paletted{p, p}, Delay: []int{1, 1}})
	f.Add(b.Bytes())
	f.Add([]byte("GIF89a"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := countGIFFrames(bytes.NewReader(data), 10)
		if err == nil && n < 0 {
			t.Fatal("negative frame count")
		}
		// Whatever the count, decoding within a small budget never panics.
		_, _ = animatedGIFThumbnail(bytes.NewReader(data), 8, 8, "crop", 1<<16)
	})
}

func FuzzDecodeBounded(f *testing.F) {
	f.Add([]byte("\x89PNG\r\n\x1a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, _, err := decodeBounded(bytes.NewReader(data), 1<<16)
		if err == nil {
			if b := img.Bounds(); b.Dx()*b.Dy() > 1<<16 {
				t.Fatalf("decoded %v past the budget", b)
			}
			makeThumbnail(img, 8, 8, "crop")
			makeThumbnail(img, 8, 8, "scale")
		}
	})
}

func FuzzParseOpenGraph(f *testing.F) {
	f.Add(`<html><head><title>t</title><meta property="og:title" content="x"></head>`)
	f.Fuzz(func(t *testing.T, page string) {
		og := parseOpenGraph(strings.NewReader(page))
		if len(og) > 51 {
			t.Fatalf("%d properties kept", len(og))
		}
	})
}
