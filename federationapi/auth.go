package federationapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// xMatrix is one parsed "Authorization: X-Matrix ..." header.
type xMatrix struct {
	Origin      spec.ServerName
	Destination spec.ServerName // "" when the sender left it out
	Key         gomatrixserverlib.KeyID
	Sig         string
}

var errNotXMatrix = errors.New("not an X-Matrix authorization")

// parseXMatrix parses an Authorization header value of the X-Matrix
// scheme as the spec describes it (RFC 9110 section 11.4): the scheme
// name in any case, one or more spaces, then comma-separated name=value
// parameters with optional whitespace around the commas and the equals
// sign, case-insensitive names, values either tokens or quoted strings
// with backslash escapes. Unquoted values may hold colons, as older
// servers send them. Unknown parameters are ignored. It returns
// errNotXMatrix for another scheme.
func parseXMatrix(header string) (xMatrix, error) {
	var x xMatrix
	scheme, rest, _ := strings.Cut(header, " ")
	if !strings.EqualFold(scheme, "X-Matrix") {
		return x, errNotXMatrix
	}
	seen := map[string]bool{}
	i := 0
	skipSpace := func() {
		for i < len(rest) && (rest[i] == ' ' || rest[i] == '\t') {
			i++
		}
	}
	for {
		// Empty list elements (",,") are allowed.
		for skipSpace(); i < len(rest) && rest[i] == ','; skipSpace() {
			i++
		}
		if i >= len(rest) {
			break
		}
		start := i
		for i < len(rest) && isTokenChar(rest[i]) {
			i++
		}
		name := strings.ToLower(rest[start:i])
		if name == "" {
			return x, errors.New("X-Matrix: expected a parameter name")
		}
		skipSpace()
		if i >= len(rest) || rest[i] != '=' {
			return x, errors.New("X-Matrix: expected = after " + name)
		}
		i++
		skipSpace()
		var value strings.Builder
		if i < len(rest) && rest[i] == '"' {
			i++
			closed := false
			for i < len(rest) {
				c := rest[i]
				i++
				if c == '"' {
					closed = true
					break
				}
				if c == '\\' {
					if i >= len(rest) {
						break
					}
					c = rest[i]
					i++
				}
				value.WriteByte(c)
			}
			if !closed {
				return x, errors.New("X-Matrix: unterminated quoted value")
			}
		} else {
			start := i
			for i < len(rest) && (isTokenChar(rest[i]) || rest[i] == ':' || rest[i] == '/' || rest[i] == '=') {
				i++
			}
			if i == start {
				return x, errors.New("X-Matrix: empty value for " + name)
			}
			value.WriteString(rest[start:i])
		}
		skipSpace()
		if i < len(rest) && rest[i] != ',' {
			return x, errors.New("X-Matrix: expected , after " + name)
		}
		switch name {
		case "origin", "destination", "key", "sig":
			if seen[name] {
				return x, errors.New("X-Matrix: " + name + " given twice")
			}
			seen[name] = true
		}
		switch name {
		case "origin":
			x.Origin = spec.ServerName(value.String())
		case "destination":
			x.Destination = spec.ServerName(value.String())
		case "key":
			x.Key = gomatrixserverlib.KeyID(value.String())
		case "sig":
			x.Sig = value.String()
		}
	}
	if x.Origin == "" || x.Key == "" || x.Sig == "" {
		return x, errors.New("X-Matrix: origin, key and sig are required")
	}
	return x, nil
}

// isTokenChar reports whether c may appear in an RFC 9110 token.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// verifyRequest authenticates a federation request by its X-Matrix
// signatures. It reads the whole body and puts it back for the handler.
// Failures are 401 M_UNAUTHORIZED (a body that is not JSON is 400
// M_NOT_JSON); an error from the key database is returned as is.
func (f *FederationAPI) verifyRequest(r *http.Request) (*fclient.FederationRequest, error) {
	body, err := httputil.ReadBody(r)
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	var auths []xMatrix
	for _, h := range r.Header.Values("Authorization") {
		x, err := parseXMatrix(h)
		if errors.Is(err, errNotXMatrix) {
			continue
		}
		if err != nil {
			return nil, httputil.Unauthorized("Malformed X-Matrix Authorization header: %s", strings.TrimPrefix(err.Error(), "X-Matrix: "))
		}
		auths = append(auths, x)
	}
	if len(auths) == 0 {
		return nil, httputil.Unauthorized("Missing X-Matrix Authorization header")
	}
	origin := auths[0].Origin
	signatures := map[gomatrixserverlib.KeyID]string{}
	for _, x := range auths {
		if x.Origin != origin {
			return nil, httputil.Unauthorized("X-Matrix Authorization headers name different origins")
		}
		if x.Destination != "" && x.Destination != f.own.name {
			return nil, httputil.Unauthorized("X-Matrix destination %q is not this server", x.Destination)
		}
		signatures[x.Key] = x.Sig
	}
	if _, _, ok := spec.ParseAndValidateServerName(origin); !ok {
		return nil, httputil.Unauthorized("X-Matrix origin is not a valid server name")
	}

	var content json.RawMessage
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 {
		if !utf8.Valid(trimmed) || !json.Valid(trimmed) {
			return nil, httputil.NotJSON("Request body is not JSON")
		}
		content = trimmed
	}
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		uri = r.URL.RequestURI()
	}
	signed, err := json.Marshal(struct {
		Method      string                                                 `json:"method"`
		URI         string                                                 `json:"uri"`
		Origin      spec.ServerName                                        `json:"origin"`
		Destination spec.ServerName                                        `json:"destination"`
		Content     json.RawMessage                                        `json:"content,omitempty"`
		Signatures  map[spec.ServerName]map[gomatrixserverlib.KeyID]string `json:"signatures"`
	}{r.Method, uri, origin, f.own.name, content, map[spec.ServerName]map[gomatrixserverlib.KeyID]string{origin: signatures}})
	if err != nil {
		return nil, httputil.NotJSON("Request body is not JSON")
	}
	results, err := f.keyRing.VerifyJSONs(r.Context(), []gomatrixserverlib.VerifyJSONRequest{{
		ServerName:           origin,
		AtTS:                 spec.AsTimestamp(time.Now()),
		Message:              signed,
		ValidityCheckingFunc: gomatrixserverlib.StrictValiditySignatureCheck,
	}})
	if err != nil {
		return nil, err
	}
	if results[0].Error != nil {
		httputil.LoggerFrom(r).WithFields(logrus.Fields{"origin": origin, "error": results[0].Error.Error()}).Info("federation request signature rejected")
		return nil, httputil.Unauthorized("Invalid X-Matrix signature from %s", origin)
	}

	req := fclient.NewFederationRequest(r.Method, origin, f.own.name, uri)
	if content != nil {
		if err := req.SetContent(content); err != nil {
			return nil, httputil.NotJSON("Request body is not JSON")
		}
	}
	return &req, nil
}
