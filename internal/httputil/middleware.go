package httputil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"
)

type ctxKey int

const requestKey ctxKey = 0

// requestInfo is what the middleware keeps about a request, in one context
// value: its ID, the route template the router matched (filled in by the
// router, as the matched route only lives on the request copy it hands
// down; used to label metrics) and the request's logger, built only when
// something logs: a held /sync long-poll should not carry one it never uses.
type requestInfo struct {
	id, method, path string
	template         string
	loggerOnce       sync.Once
	logger           *logrus.Entry
}

func (ri *requestInfo) log() *logrus.Entry {
	ri.loggerOnce.Do(func() {
		ri.logger = logrus.WithFields(logrus.Fields{"req_id": ri.id, "method": ri.method, "path": ri.path})
	})
	return ri.logger
}

// LoggerFrom returns the request's logger, which carries its request ID.
func LoggerFrom(r *http.Request) *logrus.Entry {
	return LoggerFromContext(r.Context())
}

// LoggerFromContext is LoggerFrom for code that has only the context.
func LoggerFromContext(ctx context.Context) *logrus.Entry {
	if ri, ok := ctx.Value(requestKey).(*requestInfo); ok {
		return ri.log()
	}
	return logrus.NewEntry(logrus.StandardLogger())
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

// Flush lets long responses stream through the recorder.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Middleware wraps the whole server: it gives each request an ID and a
// logger, logs and measures it, turns panics into 500 M_UNKNOWN, answers
// CORS and caps the body at maxBody bytes.
func Middleware(next http.Handler, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		reqID := newRequestID()
		info := &requestInfo{id: reqID, method: r.Method, path: r.URL.Path, template: "unmatched"}
		r = r.WithContext(context.WithValue(r.Context(), requestKey, info))
		rec := &statusRecorder{ResponseWriter: w}
		w = rec

		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				panicsTotal.Add(1)
				info.log().WithField("panic", p).WithField("stack", string(debug.Stack())).Error("handler panicked")
				if rec.status == 0 {
					WriteError(w, r, Unknown("Internal server error"))
				}
			}
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			elapsed := time.Since(start)
			observeRequest(info.template, r.Method, status, elapsed.Seconds())
			if logrus.IsLevelEnabled(logrus.DebugLevel) {
				info.log().WithFields(logrus.Fields{"status": status, "ms": elapsed.Milliseconds(), "bytes": rec.bytes}).Debug("request")
			}
		}()

		h := w.Header()
		h.Set("X-Request-Id", reqID)
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
		if r.Method == http.MethodOptions {
			// Preflight: the spec forbids running the endpoint's logic.
			w.WriteHeader(http.StatusOK)
			return
		}
		if r.ContentLength > maxBody {
			WriteError(w, r, TooLarge("Request body too large"))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		next.ServeHTTP(w, r)
	})
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ClientIP is the address of the peer. Plexus does not trust forwarding
// headers: behind a proxy every client shares the proxy's limits.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// NewRouter returns a router whose unknown paths and wrong methods are
// answered with Matrix errors. It matches the escaped path, so that IDs
// holding "/" (user IDs may) stay one path segment; read the path
// variables with Vars, which unescapes them.
func NewRouter() *mux.Router {
	r := mux.NewRouter().UseEncodedPath()
	r.NotFoundHandler = Handler(func(w http.ResponseWriter, r *http.Request) error {
		return Unrecognized("Unrecognized request")
	})
	r.MethodNotAllowedHandler = Handler(func(w http.ResponseWriter, r *http.Request) error {
		return MethodNotAllowed()
	})
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if info, ok := req.Context().Value(requestKey).(*requestInfo); ok {
				if tpl, err := mux.CurrentRoute(req).GetPathTemplate(); err == nil {
					info.template = tpl
				}
			}
			next.ServeHTTP(w, req)
		})
	})
	return r
}

// Vars returns the request's path variables, unescaped. A variable that is
// not valid percent-encoding is returned as it is.
func Vars(r *http.Request) map[string]string {
	raw := mux.Vars(r)
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		if u, err := url.PathUnescape(v); err == nil {
			v = u
		}
		out[k] = v
	}
	return out
}
