package httputil

import (
	"net/http"
	pathpkg "path"
	"strings"

	"github.com/gorilla/mux"
)

// gorilla/mux tries its routes one after the other, each with a regular
// expression: a request for a route registered late (PUT /send is about
// the hundredth) paid some 80 µs before its handler ran, more than the
// rest of the routing and middleware together. IndexRoutes groups the
// routes by three literal segments of their path (/_matrix/client/v3/
// rooms/… is "_matrix", "client", "rooms"), so that a request is matched
// against the few routes that can match it, in the order they were
// registered. A request none of them takes (404, 405, a path to clean,
// a route registered later) goes to the router itself, which answers as
// it always did.

// IndexRoutes returns a handler equivalent to root (a NewRouter whose
// routes have a path and methods only).
func IndexRoutes(root *mux.Router) (http.Handler, error) {
	byKey := map[string][]*mux.Route{}
	var keyless []*mux.Route
	err := root.Walk(func(r *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, err := r.GetPathTemplate()
		if err != nil {
			return err
		}
		key := templateKey(tpl)
		if key == "" {
			// Tried for every path: it goes into every group, in order.
			keyless = append(keyless, r)
			for k := range byKey {
				byKey[k] = append(byKey[k], r)
			}
			return nil
		}
		if _, ok := byKey[key]; !ok {
			byKey[key] = append([]*mux.Route(nil), keyless...)
		}
		byKey[key] = append(byKey[key], r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		path := req.URL.EscapedPath()
		if routes, ok := byKey[pathKey(path)]; ok && cleanPath(path) == path {
			for _, route := range routes {
				var match mux.RouteMatch
				if route.Match(req, &match) && match.MatchErr == nil {
					if info, ok := req.Context().Value(requestKey).(*requestInfo); ok {
						if tpl, err := route.GetPathTemplate(); err == nil {
							info.template = tpl
						}
					}
					match.Handler.ServeHTTP(w, mux.SetURLVars(req, match.Vars))
					return
				}
			}
		}
		root.ServeHTTP(w, req)
	}), nil
}

// cleanPath is the path gorilla/mux would redirect to: path.Clean's, with
// a trailing slash kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := pathpkg.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// templateKey is the key of a route's path template: its segments 1, 2
// and 4 when it has more than four, or the whole path when it has four or
// fewer, provided those are literal and no variable before segment 4
// can span a "/". It is "" otherwise.
func templateKey(tpl string) string {
	segs, ok := templateSegments(tpl)
	if !ok {
		return ""
	}
	if len(segs) <= 4 {
		for _, s := range segs {
			if strings.Contains(s, "{") {
				return ""
			}
		}
		return tpl
	}
	for i, s := range segs[:5] {
		if !strings.Contains(s, "{") {
			continue
		}
		if i != 3 || !singleSegmentVariable(s) {
			return ""
		}
	}
	return segs[1] + "/" + segs[2] + "/" + segs[4]
}

// pathKey is the key of a request's (escaped) path, as templateKey
// gives it to the routes that can match the path.
func pathKey(path string) string {
	segs := strings.SplitN(path, "/", 6)
	if len(segs) <= 4 {
		return path
	}
	return segs[1] + "/" + segs[2] + "/" + segs[4]
}

// templateSegments splits a path template at the slashes outside its
// variables' braces; ok is false when the braces do not balance.
func templateSegments(tpl string) (segs []string, ok bool) {
	depth, start := 0, 0
	for i := 0; i < len(tpl); i++ {
		switch tpl[i] {
		case '{':
			depth++
		case '}':
			depth--
			if depth < 0 {
				return nil, false
			}
		case '/':
			if depth == 0 {
				segs = append(segs, tpl[start:i])
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, false
	}
	return append(segs, tpl[start:]), true
}

// singleSegmentVariable reports whether a template segment is one variable
// that cannot match a "/": {name}, or {name:pattern} with a pattern of
// letters, digits and (?:|) only, as the API version alternatives are.
func singleSegmentVariable(seg string) bool {
	if !strings.HasPrefix(seg, "{") || !strings.HasSuffix(seg, "}") {
		return false
	}
	_, pattern, hasPattern := strings.Cut(seg[1:len(seg)-1], ":")
	if !hasPattern {
		return true
	}
	for _, c := range pattern {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.ContainsRune("(?:|)", c):
		default:
			return false
		}
	}
	return true
}
