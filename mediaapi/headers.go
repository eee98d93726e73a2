package mediaapi

import (
	"fmt"
	"mime"
	"net/http"
	"strings"
)

// inlineTypes are the content types the spec lists as safe to serve
// inline; anything else is served as an attachment so that a browser
// never renders it in our origin.
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// servedContentType is the stored type if it parses, else a type no
// browser renders.
func servedContentType(stored string) (full, base string) {
	base, params, err := mime.ParseMediaType(stored)
	if err != nil || base == "" {
		return "application/octet-stream", "application/octet-stream"
	}
	return mime.FormatMediaType(base, params), base
}

// contentDisposition is "inline" or "attachment" by type, with the file
// name per RFC 6266: an ASCII filename= when the name is plain ASCII, and
// filename*=utf-8” percent-encoded always, so no name can break out of
// the header.
func contentDisposition(base, name string) string {
	kind := "attachment"
	if inlineTypes[base] {
		kind = "inline"
	}
	if name == "" {
		return kind
	}
	d := kind
	if isPlainASCII(name) {
		d += `; filename="` + name + `"`
	}
	return d + "; filename*=utf-8''" + rfc5987Escape(name)
}

// isPlainASCII is printable ASCII without the quote and backslash that
// would need escaping inside a quoted string.
func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// rfc5987Escape percent-encodes everything but RFC 5987's attr-char.
func rfc5987Escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// setContentHeaders sets the headers every served file gets.
func setContentHeaders(h http.Header, contentType, name string) {
	full, base := servedContentType(contentType)
	h.Set("Content-Type", full)
	h.Set("Content-Disposition", contentDisposition(base, name))
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	// Content under a media ID never changes.
	h.Set("Cache-Control", "public, max-age=86400, immutable")
}
