package httputil

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// The server's few metrics, written in the Prometheus text format by hand:
// the Prometheus client library (with protobuf under it) was a tenth of
// the binary, and the binary's pages are most of an idle server's memory.

// durationBuckets are the upper bounds of the request-duration histogram.
var durationBuckets = []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30}

type requestLabels struct{ route, method, status string }

// histogram is one labelled series of the request-duration histogram;
// observing it takes no lock.
type histogram struct {
	buckets [10]atomic.Uint64 // per bucket of durationBuckets, the last is +Inf
	count   atomic.Uint64
	sumBits atomic.Uint64 // float64 bits of the sum of observations
}

func (h *histogram) observe(v float64) {
	i, _ := slices.BinarySearch(durationBuckets, v)
	h.buckets[i].Add(1)
	h.count.Add(1)
	for {
		old := h.sumBits.Load()
		if h.sumBits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

var (
	requestDurations sync.Map // requestLabels → *histogram
	panicsTotal      atomic.Uint64
)

// observeRequest records one answered request.
func observeRequest(route, method string, status int, seconds float64) {
	key := requestLabels{route, method, strconv.Itoa(status)}
	h, ok := requestDurations.Load(key)
	if !ok {
		h, _ = requestDurations.LoadOrStore(key, new(histogram))
	}
	h.(*histogram).observe(seconds)
}

// MetricsHandler answers GET /metrics.
func MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		writeMetrics(bw)
		bw.Flush()
	})
}

func writeMetrics(w *bufio.Writer) {
	writeRequestDurations(w)
	fmt.Fprintf(w, "# HELP plexus_http_panics_total Handler panics recovered into 500 responses.\n# TYPE plexus_http_panics_total counter\nplexus_http_panics_total %d\n", panicsTotal.Load())
	writeRuntimeMetrics(w)
}

func writeRequestDurations(w *bufio.Writer) {
	type series struct {
		labels requestLabels
		h      *histogram
	}
	var all []series
	requestDurations.Range(func(k, v any) bool {
		all = append(all, series{k.(requestLabels), v.(*histogram)})
		return true
	})
	slices.SortFunc(all, func(a, b series) int {
		return strings.Compare(a.labels.route+"\x00"+a.labels.method+"\x00"+a.labels.status,
			b.labels.route+"\x00"+b.labels.method+"\x00"+b.labels.status)
	})
	const name = "plexus_http_request_duration_seconds"
	fmt.Fprintf(w, "# HELP %s Time to answer HTTP requests, by route and status.\n# TYPE %s histogram\n", name, name)
	for _, s := range all {
		labels := fmt.Sprintf(`method="%s",route="%s",status="%s"`,
			escapeLabel(s.labels.method), escapeLabel(s.labels.route), escapeLabel(s.labels.status))
		var cumulative uint64
		for i := range s.h.buckets {
			cumulative += s.h.buckets[i].Load()
			le := "+Inf"
			if i < len(durationBuckets) {
				le = strconv.FormatFloat(durationBuckets[i], 'g', -1, 64)
			}
			fmt.Fprintf(w, "%s_bucket{%s,le=\"%s\"} %d\n", name, labels, le, cumulative)
		}
		fmt.Fprintf(w, "%s_sum{%s} %s\n", name, labels, strconv.FormatFloat(math.Float64frombits(s.h.sumBits.Load()), 'g', -1, 64))
		// The count is the buckets' total, so that a scrape never shows a
		// count that disagrees with its +Inf bucket.
		fmt.Fprintf(w, "%s_count{%s} %d\n", name, labels, cumulative)
	}
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(v string) string { return labelEscaper.Replace(v) }

// writeRuntimeMetrics writes the Go runtime's and the process' figures under
// the names the Prometheus client used, so dashboards keep working.
func writeRuntimeMetrics(w *bufio.Writer) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	metric := func(kind, name, help string, v float64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, kind, name, strconv.FormatFloat(v, 'g', -1, 64))
	}
	gauge := func(name, help string, v float64) { metric("gauge", name, help, v) }
	counter := func(name, help string, v float64) { metric("counter", name, help, v) }
	gauge("go_goroutines", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	gauge("go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use.", float64(ms.Alloc))
	counter("go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now.", float64(ms.TotalAlloc))
	gauge("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use.", float64(ms.HeapAlloc))
	gauge("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", float64(ms.HeapInuse))
	gauge("go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used.", float64(ms.HeapIdle))
	gauge("go_memstats_heap_released_bytes", "Number of heap bytes released to OS.", float64(ms.HeapReleased))
	gauge("go_memstats_heap_sys_bytes", "Number of heap bytes obtained from system.", float64(ms.HeapSys))
	gauge("go_memstats_heap_objects", "Number of currently allocated objects.", float64(ms.HeapObjects))
	gauge("go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in use.", float64(ms.StackInuse))
	gauge("go_memstats_sys_bytes", "Number of bytes obtained from system.", float64(ms.Sys))
	gauge("go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place.", float64(ms.NextGC))
	counter("go_gc_cycles_total", "Completed garbage collection cycles.", float64(ms.NumGC))
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
		counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", cpu)
	}
	if rss, ok := residentBytes(); ok {
		gauge("process_resident_memory_bytes", "Resident memory size in bytes.", float64(rss))
	}
}

// residentBytes reads the process' resident memory (Linux only).
func residentBytes() (int64, bool) {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(data))
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}
