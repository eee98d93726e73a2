package httputil

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// quietLogs hides the error logs that failing handlers produce on purpose.
func quietLogs(t *testing.T) {
	out := logrus.StandardLogger().Out
	logrus.SetOutput(io.Discard)
	t.Cleanup(func() { logrus.SetOutput(out) })
}

// errBody decodes a Matrix error response.
func errBody(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("response is not JSON: %q", rec.Body.String())
	}
	return m
}

func expectError(t *testing.T, rec *httptest.ResponseRecorder, status int, errcode string) map[string]any {
	t.Helper()
	m := errBody(t, rec)
	if rec.Code != status || m["errcode"] != errcode {
		t.Fatalf("got %d %s, want %d %s", rec.Code, rec.Body, status, errcode)
	}
	if _, ok := m["error"].(string); !ok {
		t.Fatalf("no error message: %s", rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	return m
}

func expectCORS(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	h := rec.Header()
	if h.Get("Access-Control-Allow-Origin") != "*" ||
		!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") ||
		!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("CORS headers missing: %v", h)
	}
}

func serve(h http.Handler, req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestMiddlewareRecoversPanics(t *testing.T) {
	quietLogs(t)
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic("secret internals: password=hunter2")
	}), 1024)
	rec := serve(h, httptest.NewRequest("GET", "/x", nil))
	expectError(t, rec, http.StatusInternalServerError, "M_UNKNOWN")
	if strings.Contains(rec.Body.String(), "hunter2") || strings.Contains(rec.Body.String(), "secret") {
		t.Fatalf("panic text leaked: %s", rec.Body)
	}
	expectCORS(t, rec)
	if rec.Header().Get("X-Request-Id") == "" {
		t.Fatal("no X-Request-Id on a panic")
	}
}

func TestMiddlewareLetsAbortHandlerThrough(t *testing.T) {
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}), 1024)
	defer func() {
		if p := recover(); p != http.ErrAbortHandler {
			t.Fatalf("recovered %v, want http.ErrAbortHandler", p)
		}
	}()
	serve(h, httptest.NewRequest("GET", "/x", nil))
	t.Fatal("ErrAbortHandler was swallowed")
}

func TestMiddlewareHeaders(t *testing.T) {
	quietLogs(t)
	h := Middleware(Handler(func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.Path == "/fail" {
			return Forbidden("no")
		}
		WriteJSON(w, http.StatusOK, map[string]string{"ok": "yes"})
		return nil
	}), 1024)
	ids := map[string]bool{}
	for _, path := range []string{"/ok", "/fail", "/ok"} {
		rec := serve(h, httptest.NewRequest("GET", path, nil))
		expectCORS(t, rec)
		id := rec.Header().Get("X-Request-Id")
		if id == "" || ids[id] {
			t.Fatalf("%s: X-Request-Id %q missing or reused", path, id)
		}
		ids[id] = true
	}
}

func TestMiddlewarePreflight(t *testing.T) {
	called := false
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called = true
		w.WriteHeader(http.StatusTeapot)
	}), 1024)
	req := httptest.NewRequest("OPTIONS", "/_matrix/client/v3/login", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	rec := serve(h, req)
	if rec.Code != http.StatusOK || called {
		t.Fatalf("preflight: status %d, handler called %v", rec.Code, called)
	}
	expectCORS(t, rec)
}

func TestMiddlewareBodyCap(t *testing.T) {
	called := false
	h := Middleware(Handler(func(w http.ResponseWriter, r *http.Request) error {
		called = true
		var v map[string]any
		if err := ReadJSON(r, &v); err != nil {
			return err
		}
		WriteJSON(w, http.StatusOK, v)
		return nil
	}), 64)
	big := `{"k":"` + strings.Repeat("x", 100) + `"}`

	// A declared length over the cap is refused before the handler runs.
	rec := serve(h, httptest.NewRequest("POST", "/x", strings.NewReader(big)))
	expectError(t, rec, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	if called {
		t.Fatal("handler ran for a body declared too large")
	}
	expectCORS(t, rec)

	// A chunked body (no length) is cut off while the handler reads it.
	req := httptest.NewRequest("POST", "/x", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	rec = serve(h, req)
	expectError(t, rec, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")

	// A chunked body under the cap goes through.
	req = httptest.NewRequest("POST", "/x", io.MultiReader(strings.NewReader(`{"k":"v"}`)))
	req.ContentLength = -1
	if rec = serve(h, req); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"k":"v"`) {
		t.Fatalf("small chunked body: %d %s", rec.Code, rec.Body)
	}
}

func TestNewRouter(t *testing.T) {
	r := NewRouter()
	r.Handle("/known", Handler(func(w http.ResponseWriter, r *http.Request) error {
		WriteJSON(w, http.StatusOK, struct{}{})
		return nil
	})).Methods(http.MethodGet)
	h := Middleware(r, 1024)

	if rec := serve(h, httptest.NewRequest("GET", "/known", nil)); rec.Code != http.StatusOK {
		t.Fatalf("known route: %d %s", rec.Code, rec.Body)
	}
	rec := serve(h, httptest.NewRequest("GET", "/unknown", nil))
	expectError(t, rec, http.StatusNotFound, "M_UNRECOGNIZED")
	expectCORS(t, rec)
	rec = serve(h, httptest.NewRequest("DELETE", "/known", nil))
	expectError(t, rec, http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
	expectCORS(t, rec)
}

func TestReadJSON(t *testing.T) {
	type body struct {
		Name  string   `json:"name"`
		Count int      `json:"count"`
		Tags  []string `json:"tags"`
	}
	cases := []struct {
		in, errcode string
	}{
		{`{"name":"a","count":2,"tags":["x"]}`, ""},
		{`  {"name":"a"}  `, ""},
		{`{}`, ""},
		{``, "M_NOT_JSON"},
		{`not json`, "M_NOT_JSON"},
		{`[1,2]`, "M_NOT_JSON"},
		{`"str"`, "M_NOT_JSON"},
		{`null`, "M_NOT_JSON"},
		{`{"name":"a"`, "M_NOT_JSON"},
		{`{"name":"a"} {}`, "M_NOT_JSON"},
		{`{"name":1}`, "M_BAD_JSON"},
		{`{"count":"2"}`, "M_BAD_JSON"},
		{`{"count":1.5}`, "M_BAD_JSON"},
		{`{"tags":"x"}`, "M_BAD_JSON"},
		{`{"tags":[1]}`, "M_BAD_JSON"},
	}
	for _, c := range cases {
		var dst body
		err := ReadJSON(httptest.NewRequest("POST", "/", strings.NewReader(c.in)), &dst)
		if c.errcode == "" {
			if err != nil {
				t.Errorf("%q: %v", c.in, err)
			}
			continue
		}
		var merr *Error
		if !errors.As(err, &merr) || merr.Code != c.errcode || merr.Status != http.StatusBadRequest {
			t.Errorf("%q: got %v, want 400 %s", c.in, err, c.errcode)
		}
	}
}

func TestWriteError(t *testing.T) {
	quietLogs(t)
	req := httptest.NewRequest("GET", "/", nil)

	rec := httptest.NewRecorder()
	WriteError(rec, req, errors.New("pq: connection to 10.0.0.5 refused, password=hunter2"))
	expectError(t, rec, http.StatusInternalServerError, "M_UNKNOWN")
	if strings.Contains(rec.Body.String(), "hunter2") || strings.Contains(rec.Body.String(), "10.0.0.5") {
		t.Fatalf("internals leaked: %s", rec.Body)
	}

	// A Matrix error keeps its status and code, even when wrapped.
	rec = httptest.NewRecorder()
	WriteError(rec, req, fmt.Errorf("checking: %w", Forbidden("Not allowed in %s", "here")))
	if m := expectError(t, rec, http.StatusForbidden, "M_FORBIDDEN"); m["error"] != "Not allowed in here" {
		t.Fatalf("message: %v", m)
	}

	// Extra fields sit beside errcode and error.
	rec = httptest.NewRecorder()
	WriteError(rec, req, UnknownToken("gone", true))
	if m := expectError(t, rec, http.StatusUnauthorized, "M_UNKNOWN_TOKEN"); m["soft_logout"] != true {
		t.Fatalf("soft_logout: %v", m)
	}
}

func TestLimitExceeded(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteError(rec, httptest.NewRequest("GET", "/", nil), LimitExceeded(1500))
	m := expectError(t, rec, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
	if m["retry_after_ms"] != float64(1500) {
		t.Fatalf("retry_after_ms: %v", m)
	}
	// Retry-After is in whole seconds, rounded up.
	if got := rec.Header().Get("Retry-After"); got != "2" {
		t.Fatalf("Retry-After %q, want 2", got)
	}
}

func TestErrorWithCopies(t *testing.T) {
	base := Forbidden("x")
	e := base.With("a", 1)
	if base.Extra != nil || e.Extra["a"] != 1 {
		t.Fatalf("With changed the original: %+v %+v", base, e)
	}
	// No errcode: only the extra fields (a UIAA challenge).
	data, _ := json.Marshal(&Error{Status: 401, Extra: map[string]any{"session": "s"}})
	if string(data) != `{"session":"s"}` {
		t.Fatalf("challenge: %s", data)
	}
}
