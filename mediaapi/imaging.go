package mediaapi

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	xdraw "golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // registers the WebP decoder
)

// Image errors, mapped to Matrix errors by the handler.
var (
	errNotImage      = errors.New("mediaapi: not an image that can be thumbnailed")
	errImageTooLarge = errors.New("mediaapi: image has too many pixels")
)

// thumbnailable are the source types thumbnails are made of.
var thumbnailable = map[string]bool{"image/png": true, "image/jpeg": true, "image/gif": true, "image/webp": true}

// imageSize reads only the header: width and height, and the format.
func imageSize(r io.Reader) (w, h int, format string, err error) {
	cfg, format, err := image.DecodeConfig(r)
	if err != nil {
		return 0, 0, "", errNotImage
	}
	return cfg.Width, cfg.Height, format, nil
}

// decodeBounded decodes an image after checking from its header that it
// has at most maxPixels pixels, so that a small file claiming enormous
// dimensions (a decompression bomb) is refused before any memory is spent
// on it.
func decodeBounded(r io.ReadSeeker, maxPixels int64) (image.Image, string, error) {
	w, h, _, err := imageSize(r)
	if err != nil {
		return nil, "", err
	}
	if w <= 0 || h <= 0 {
		return nil, "", errNotImage
	}
	if int64(w)*int64(h) > maxPixels {
		return nil, "", errImageTooLarge
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, "", err
	}
	img, format, err := image.Decode(r)
	if err != nil {
		return nil, "", errNotImage
	}
	// A decoder must not hand back more than the header promised.
	if b := img.Bounds(); int64(b.Dx())*int64(b.Dy()) > maxPixels {
		return nil, "", errImageTooLarge
	}
	return img, format, nil
}

// thumbnailDims is the size of the thumbnail of a srcW×srcH image for a
// w×h request. crop: exactly w×h (the image scaled to cover it, then the
// middle cut out), each side at most the source's. scale: the image
// scaled, keeping its aspect, to fit in w×h. Never larger than the source.
func thumbnailDims(srcW, srcH, w, h int, method string) (int, int) {
	if method == "crop" {
		return min(w, srcW), min(h, srcH)
	}
	// scale: the largest factor ≤ 1 that fits both sides.
	fw, fh := float64(w)/float64(srcW), float64(h)/float64(srcH)
	f := min(fw, fh, 1)
	return max(1, int(float64(srcW)*f+0.5)), max(1, int(float64(srcH)*f+0.5))
}

// makeThumbnail resizes img for a w×h request by method.
func makeThumbnail(img image.Image, w, h int, method string) image.Image {
	b := img.Bounds()
	tw, th := thumbnailDims(b.Dx(), b.Dy(), w, h, method)
	src := b
	if method == "crop" {
		// The largest centred part of the source with the target's aspect.
		cw, ch := b.Dx(), b.Dx()*th/tw
		if ch > b.Dy() {
			cw, ch = b.Dy()*tw/th, b.Dy()
		}
		x0, y0 := b.Min.X+(b.Dx()-cw)/2, b.Min.Y+(b.Dy()-ch)/2
		src = image.Rect(x0, y0, x0+cw, y0+ch)
	}
	dst := image.NewRGBA(image.Rect(0, 0, tw, th))
	xdraw.CatmullRom.Scale(dst, dst.Bounds(), img, src, draw.Src, nil)
	return dst
}

// encodeThumbnail writes JPEG sources as JPEG and the rest (which may be
// transparent) as PNG.
func encodeThumbnail(img image.Image, format string) ([]byte, string, error) {
	var buf bytes.Buffer
	if format == "jpeg" {
		if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 85}); err != nil {
			return nil, "", err
		}
		return buf.Bytes(), "image/jpeg", nil
	}
	if err := png.Encode(&buf, img); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), "image/png", nil
}

// maxGIFFrames bounds the work of an animated thumbnail.
const maxGIFFrames = 300

// animatedGIFThumbnail scales every frame of an animated GIF, for
// animated=true requests. The frames' total pixels count against
// maxPixels, like a still image's.
func animatedGIFThumbnail(r io.ReadSeeker, w, h int, method string, maxPixels int64) ([]byte, error) {
	sw, sh, format, err := imageSize(r)
	if err != nil || format != "gif" {
		return nil, errNotImage
	}
	if int64(sw)*int64(sh) > maxPixels {
		return nil, errImageTooLarge
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	// DecodeAll keeps every frame (each at most the screen size) in
	// memory, so the frames are counted first: frames × screen must fit
	// the pixel budget.
	frames, err := countGIFFrames(r, maxGIFFrames)
	if err != nil {
		return nil, errNotImage
	}
	if frames > maxGIFFrames || int64(frames)*int64(sw)*int64(sh) > maxPixels {
		return nil, errImageTooLarge
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	g, err := gif.DecodeAll(r)
	if err != nil || len(g.Image) != frames {
		return nil, errNotImage
	}
	tw, th := thumbnailDims(sw, sh, w, h, method)
	out := &gif.GIF{LoopCount: g.LoopCount, Config: image.Config{Width: tw, Height: th}}
	// Frames may cover part of the screen and build on the previous one:
	// compose them on a canvas, then scale the whole canvas.
	canvas := image.NewRGBA(image.Rect(0, 0, sw, sh))
	for i, frame := range g.Image {
		draw.Draw(canvas, frame.Bounds(), frame, frame.Bounds().Min, draw.Over)
		scaled := makeThumbnail(canvas, w, h, method)
		pal := image.NewPaletted(scaled.Bounds(), frame.Palette)
		draw.FloydSteinberg.Draw(pal, pal.Bounds(), scaled, image.Point{})
		out.Image = append(out.Image, pal)
		out.Delay = append(out.Delay, g.Delay[i])
		out.Disposal = append(out.Disposal, gif.DisposalNone)
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, out); err != nil {
		return nil, fmt.Errorf("encode animated thumbnail: %w", err)
	}
	return buf.Bytes(), nil
}
