package httputil

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMetricsExposition(t *testing.T) {
	route := `/test/{id:(?:a|"b")}`
	observeRequest(route, "GET", 200, 0.003) // bucket le=0.005
	observeRequest(route, "GET", 200, 0.2)   // le=0.5
	observeRequest(route, "GET", 200, 100)   // only +Inf
	observeRequest(route, "PUT", 500, 0.001) // le=0.001 (bounds are inclusive)

	rec := httptest.NewRecorder()
	MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("content type %q", ct)
	}
	get := `method="GET",route="/test/{id:(?:a|\"b\")}",status="200"`
	for _, want := range []string{
		"# TYPE plexus_http_request_duration_seconds histogram",
		`plexus_http_request_duration_seconds_bucket{` + get + `,le="0.001"} 0`,
		`plexus_http_request_duration_seconds_bucket{` + get + `,le="0.005"} 1`,
		`plexus_http_request_duration_seconds_bucket{` + get + `,le="0.1"} 1`,
		`plexus_http_request_duration_seconds_bucket{` + get + `,le="0.5"} 2`,
		`plexus_http_request_duration_seconds_bucket{` + get + `,le="30"} 2`,
		`plexus_http_request_duration_seconds_bucket{` + get + `,le="+Inf"} 3`,
		`plexus_http_request_duration_seconds_sum{` + get + `} 100.203`,
		`plexus_http_request_duration_seconds_count{` + get + `} 3`,
		`plexus_http_request_duration_seconds_bucket{method="PUT",route="/test/{id:(?:a|\"b\")}",status="500",le="0.001"} 1`,
		"# TYPE plexus_http_panics_total counter",
		"# TYPE go_goroutines gauge",
		"go_memstats_heap_inuse_bytes ",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	// Every sample line is "name{labels} value" or "name value".
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i <= 0 || i == len(line)-1 {
			t.Errorf("malformed sample line %q", line)
		}
	}
}

func TestPanicsCounted(t *testing.T) {
	before := panicsTotal.Load()
	h := Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }), 1<<20)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d", rec.Code)
	}
	if got := panicsTotal.Load(); got != before+1 {
		t.Fatalf("panics counter %d, want %d", got, before+1)
	}
}
