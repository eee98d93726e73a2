package httputil

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
)

func TestTemplateAndPathKeysAgree(t *testing.T) {
	for _, c := range []struct {
		template, key string
		paths         []string // paths the template matches: they have its key
	}{
		{"/_matrix/client/versions", "/_matrix/client/versions", []string{"/_matrix/client/versions"}},
		{"/_matrix/client/{apiVersion:(?:r0|v3)}/rooms/{roomId}/send/{eventType}/{txnId}", "_matrix/client/rooms",
			[]string{"/_matrix/client/v3/rooms/%21a%3Ab/send/m.room.message/1"}},
		{"/_matrix/client/{apiVersion:(?:r0|v3)}/sync", "_matrix/client/sync", []string{"/_matrix/client/r0/sync"}},
		{"/_matrix/federation/v1/send/{txnId}", "_matrix/federation/send", []string{"/_matrix/federation/v1/send/abc"}},
		{"/_matrix/client/{apiVersion:(?:r0|v3)}/pushrules/{path:.*}", "_matrix/client/pushrules",
			[]string{"/_matrix/client/v3/pushrules/global/override/a/b"}},
		{"/.well-known/matrix/server", "/.well-known/matrix/server", []string{"/.well-known/matrix/server"}},
		// No key: tried for every path.
		{"/_matrix/{any:.*}/x/y", "", nil},
		{"/_matrix/client/{v}/{what}/x", "", nil},
		{"/_matrix/{v}", "", nil},
		{"/a/{unbalanced", "", nil},
	} {
		if got := templateKey(c.template); got != c.key {
			t.Errorf("templateKey(%q) = %q, want %q", c.template, got, c.key)
		}
		for _, p := range c.paths {
			if got := pathKey(p); got != c.key {
				t.Errorf("pathKey(%q) = %q, want %q (its template's)", p, got, c.key)
			}
		}
	}
}

// TestIndexRoutesAnswersAsTheRouter sends the same requests to a router
// and to its index: the same handler, variables, 404s, 405s and
// redirects, in registration order where routes overlap, also for routes
// registered after the index was made.
func TestIndexRoutesAnswersAsTheRouter(t *testing.T) {
	root := NewRouter()
	route := func(tpl string, methods ...string) {
		h := root.Handle(tpl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			vars := Vars(r)
			keys := make([]string, 0, len(vars))
			for k := range vars {
				keys = append(keys, k+"="+vars[k])
			}
			sort.Strings(keys)
			fmt.Fprintf(w, "%s %s", tpl, strings.Join(keys, ","))
		}))
		if len(methods) > 0 {
			h.Methods(methods...)
		}
	}
	const v3 = "/_matrix/client/{apiVersion:(?:r0|v3)}"
	route("/_matrix/client/versions", http.MethodGet)
	route(v3+"/rooms/{roomId}/send/{eventType}/{txnId}", http.MethodPut)
	route(v3+"/rooms/{roomId}/state/{eventType}/{stateKey:.*}", http.MethodGet, http.MethodPut)
	route(v3+"/rooms/{roomId}/state/{eventType}", http.MethodGet)
	route(v3+"/sync", http.MethodGet)
	route(v3 + "/pushrules/{path:.*}")
	route("/_matrix/{anything:.*}/special", http.MethodGet) // keyless, registered late
	route("/_matrix/federation/v1/send/{txnId}", http.MethodPut)
	route("/_matrix/client/{apiVersion:(?:r0|v3)}/{x}/later", http.MethodGet) // keyless
	index, err := IndexRoutes(root)
	if err != nil {
		t.Fatal(err)
	}
	// Routes registered afterwards are served too (through the router).
	route("/_matrix/federation/v1/late/{x}", http.MethodGet)
	route(v3+"/sync/late", http.MethodGet)
	requests := []struct{ method, path string }{
		{"GET", "/_matrix/client/versions"},
		{"POST", "/_matrix/client/versions"},
		{"PUT", "/_matrix/client/v3/rooms/%21r%3Aa/send/m.room.message/t%2F1"},
		{"GET", "/_matrix/client/v3/rooms/%21r%3Aa/send/m.room.message/t1"},
		{"GET", "/_matrix/client/r0/rooms/%21r%3Aa/state/m.room.name/"},
		{"GET", "/_matrix/client/r0/rooms/%21r%3Aa/state/m.room.name/a/b"},
		{"GET", "/_matrix/client/r0/rooms/%21r%3Aa/state/m.room.name"},
		{"DELETE", "/_matrix/client/r0/rooms/%21r%3Aa/state/m.room.name"},
		{"GET", "/_matrix/client/v3/sync"},
		{"GET", "/_matrix/client/v4/sync"},
		{"DELETE", "/_matrix/client/v3/pushrules/global/override/x"},
		{"GET", "/_matrix/client/v3/rooms/special"},
		{"GET", "/_matrix/a/b/c/d/special"},
		{"GET", "/_matrix/client/v3/rooms/later"},
		{"GET", "/_matrix/client/v3/sync/later"},
		{"PUT", "/_matrix/federation/v1/send/1"},
		{"GET", "/_matrix//client/v3/sync"},
		{"GET", "/_matrix/client/v3/unknown/a/b"},
		{"GET", "/_matrix/federation/v1/late/a"},
		{"GET", "/_matrix/client/v3/sync/late"},
		{"GET", "/nothing"},
		{"GET", "/"},
	}
	for _, rq := range requests {
		want, got := httptest.NewRecorder(), httptest.NewRecorder()
		root.ServeHTTP(want, httptest.NewRequest(rq.method, rq.path, nil))
		index.ServeHTTP(got, httptest.NewRequest(rq.method, rq.path, nil))
		if got.Code != want.Code || got.Body.String() != want.Body.String() || got.Header().Get("Location") != want.Header().Get("Location") {
			t.Errorf("%s %s: index answered %d %q (Location %q), the router %d %q (Location %q)", rq.method, rq.path,
				got.Code, got.Body.String(), got.Header().Get("Location"), want.Code, want.Body.String(), want.Header().Get("Location"))
		}
	}
}
