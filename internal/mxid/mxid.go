// Package mxid parses and validates Matrix user IDs (@localpart:server).
package mxid

import (
	"errors"
	"strings"

	"github.com/plexus-chat/plexus/internal/config"
)

// MaxUserIDLength is the spec's limit on a whole user ID, in bytes.
const MaxUserIDLength = 255

// UserID is a parsed user ID.
type UserID struct {
	Localpart string
	Server    string
}

func (u UserID) String() string { return "@" + u.Localpart + ":" + u.Server }

// ParseUserID parses an existing user ID. Localparts use the historical
// grammar (any printable ASCII but ':'), because IDs created before the
// stricter rules still exist on the network.
func ParseUserID(s string) (UserID, error) {
	if len(s) > MaxUserIDLength {
		return UserID{}, errors.New("user ID longer than 255 bytes")
	}
	if !strings.HasPrefix(s, "@") {
		return UserID{}, errors.New("user ID does not start with @")
	}
	local, server, ok := strings.Cut(s[1:], ":")
	if !ok {
		return UserID{}, errors.New("user ID has no server name")
	}
	if local == "" {
		return UserID{}, errors.New("user ID has an empty localpart")
	}
	for i := 0; i < len(local); i++ {
		if c := local[i]; c < 0x21 || c > 0x7e {
			return UserID{}, errors.New("user ID localpart has a character outside printable ASCII")
		}
	}
	if err := config.ValidateServerName(server); err != nil {
		return UserID{}, errors.New("user ID has a bad server name")
	}
	return UserID{Localpart: local, Server: server}, nil
}

// ValidNewLocalpart reports whether a localpart may be registered now:
// only a-z, 0-9, and . _ = - / + are allowed.
func ValidNewLocalpart(local string) bool {
	if local == "" {
		return false
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("._=-/+", c) >= 0) {
			return false
		}
	}
	return true
}
