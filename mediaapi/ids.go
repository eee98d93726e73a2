package mediaapi

import (
	"crypto/rand"
	"fmt"
	"regexp"
	"strings"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
)

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newMediaID returns 24 random letters and digits (about 143 bits).
func newMediaID() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		// 256 % 62 bias is negligible for an unguessable ID.
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b[:])
}

// validMediaID is the spec's character set for media IDs, which keeps
// them safe in paths and URLs.
var validMediaID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,255}$`)

// uploadPath matches the upload endpoints (POST /upload, PUT /upload/{s}/{id}).
var uploadPath = regexp.MustCompile(`^/_matrix/media/(?:r0|v3)/upload(?:/[^/]+/[^/]+)?/?$`)

// checkMediaRef validates the server name and media ID of a request, as
// the spec requires before they go anywhere near storage or the network.
func checkMediaRef(server, id string) error {
	if err := config.ValidateServerName(server); err != nil {
		return httputil.NotFound("Unknown server name")
	}
	if !validMediaID.MatchString(id) {
		return httputil.NotFound("Invalid media ID")
	}
	return nil
}

// ParseMXC splits mxc://server/id, validating both parts.
func ParseMXC(uri string) (server, id string, err error) {
	rest, ok := strings.CutPrefix(uri, "mxc://")
	if !ok {
		return "", "", fmt.Errorf("%q is not an mxc:// URI", uri)
	}
	server, id, ok = strings.Cut(rest, "/")
	if !ok || config.ValidateServerName(server) != nil || !validMediaID.MatchString(id) {
		return "", "", fmt.Errorf("%q is not a valid mxc:// URI", uri)
	}
	return server, id, nil
}

func mxc(server, id string) string { return "mxc://" + server + "/" + id }
