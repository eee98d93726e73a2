package syncapi

import (
	"errors"
	"strconv"
	"strings"
)

// Token is a position in every stream a client syncs. It is sent as an
// opaque string ("s" then the positions joined by "_") and stays valid
// across restarts: every stream is either stored or (typing) counts from
// the start time in milliseconds, so it only grows.
type Token struct {
	PDU         int64 // the room event stream (roomserver output positions)
	Typing      int64
	Receipt     int64
	AccountData int64
	ToDevice    int64
	Presence    int64
	DeviceList  int64
}

func (t Token) fields() []*int64 {
	return []*int64{&t.PDU, &t.Typing, &t.Receipt, &t.AccountData, &t.ToDevice, &t.Presence, &t.DeviceList}
}

// String encodes the token.
func (t Token) String() string {
	var b strings.Builder
	b.WriteByte('s')
	for i, f := range t.fields() {
		if i > 0 {
			b.WriteByte('_')
		}
		b.WriteString(strconv.FormatInt(*f, 10))
	}
	return b.String()
}

// ErrBadToken is a token this server did not issue.
var ErrBadToken = errors.New("malformed sync token")

// ParseToken decodes a token. Tokens from older versions with fewer
// streams parse with the missing positions at 0.
func ParseToken(s string) (Token, error) {
	var t Token
	if len(s) < 2 || s[0] != 's' || len(s) > 200 {
		return t, ErrBadToken
	}
	parts := strings.Split(s[1:], "_")
	ptrs := []*int64{&t.PDU, &t.Typing, &t.Receipt, &t.AccountData, &t.ToDevice, &t.Presence, &t.DeviceList}
	if len(parts) > len(ptrs) {
		return Token{}, ErrBadToken
	}
	for i, p := range parts {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil || n < 0 || (len(p) > 1 && p[0] == '0') {
			return Token{}, ErrBadToken
		}
		*ptrs[i] = n
	}
	return t, nil
}

// IsAfter reports whether t is ahead of o in any stream.
func (t Token) IsAfter(o Token) bool {
	a, b := t.fields(), o.fields()
	for i := range a {
		if *a[i] > *b[i] {
			return true
		}
	}
	return false
}
