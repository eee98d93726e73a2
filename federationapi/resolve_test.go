package federationapi

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// fakeNet answers well-known and SRV lookups from tables and counts them.
type fakeNet struct {
	// wellKnown maps a host to a response body with status 200, or to
	// "404" or "refused".
	wellKnown map[string]string
	header    http.Header
	srv       map[string][]*net.SRV // "_service._tcp.host"
	wkCalls   int
	srvCalls  int
}

func (f *fakeNet) resolver(now *time.Time) *resolver {
	r := newResolver(nil)
	r.now = func() time.Time { return *now }
	r.lookupSRV = func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error) {
		f.srvCalls++
		if recs, ok := f.srv["_"+service+"._"+proto+"."+name]; ok {
			return "", recs, nil
		}
		return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	r.wellKnown = func(ctx context.Context, host string) (*http.Response, error) {
		f.wkCalls++
		body, ok := f.wellKnown[host]
		switch {
		case !ok || body == "refused":
			return nil, errors.New("connection refused")
		case body == "404":
			return &http.Response{StatusCode: 404, Header: f.header.Clone(), Body: io.NopCloser(strings.NewReader("{}"))}, nil
		}
		h := f.header.Clone()
		if h == nil {
			h = http.Header{}
		}
		return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader(body))}, nil
	}
	return r
}

func TestResolveFollowsTheSpecSteps(t *testing.T) {
	srv := func(target string, port uint16) []*net.SRV { return []*net.SRV{{Target: target, Port: port}} }
	fn := &fakeNet{
		wellKnown: map[string]string{
			"wk-ip.example":         `{"m.server": "192.0.2.1"}`,
			"wk-ip6port.example":    `{"m.server": "[2001:db8::1]:443"}`,
			"wk-port.example":       `{"m.server": "delegated.example:1234"}`,
			"wk-srv.example":        `{"m.server": "delegated-srv.example"}`,
			"wk-old-srv.example":    `{"m.server": "delegated-old.example"}`,
			"wk-plain.example":      `{"m.server": "delegated-plain.example"}`,
			"wk-bad.example":        `{"m.server": "not a server name"}`,
			"wk-notjson.example":    `<html>`,
			"wk-404.example":        "404",
			"wk-refused.example":    "refused",
			"wk-srv-dotted.example": `{"m.server": "dotted.example"}`,
		},
		srv: map[string][]*net.SRV{
			"_matrix-fed._tcp.delegated-srv.example": srv("fed.delegated-srv.example.", 8000),
			"_matrix._tcp.delegated-old.example":     srv("old.delegated-old.example.", 8001),
			"_matrix-fed._tcp.wk-404.example":        srv("fed.wk-404.example.", 8002),
			"_matrix._tcp.wk-refused.example":        srv("old.wk-refused.example", 8003),
			"_matrix-fed._tcp.dotted.example":        srv(".", 0),
		},
	}
	cases := []struct {
		name string
		want target
	}{
		// 1. IP literals, with or without a port.
		{"192.0.2.9", target{"192.0.2.9:8448", "192.0.2.9", "192.0.2.9"}},
		{"192.0.2.9:99", target{"192.0.2.9:99", "192.0.2.9:99", "192.0.2.9"}},
		{"[2001:db8::9]", target{"[2001:db8::9]:8448", "[2001:db8::9]", "2001:db8::9"}},
		{"[2001:db8::9]:99", target{"[2001:db8::9]:99", "[2001:db8::9]:99", "2001:db8::9"}},
		// 2. A hostname with a port: no well-known.
		{"port.example:1234", target{"port.example:1234", "port.example:1234", "port.example"}},
		// 3.1 to 3.5: delegation.
		{"wk-ip.example", target{"192.0.2.1:8448", "192.0.2.1", "192.0.2.1"}},
		{"wk-ip6port.example", target{"[2001:db8::1]:443", "[2001:db8::1]:443", "2001:db8::1"}},
		{"wk-port.example", target{"delegated.example:1234", "delegated.example:1234", "delegated.example"}},
		{"wk-srv.example", target{"fed.delegated-srv.example:8000", "delegated-srv.example", "delegated-srv.example"}},
		{"wk-old-srv.example", target{"old.delegated-old.example:8001", "delegated-old.example", "delegated-old.example"}},
		{"wk-plain.example", target{"delegated-plain.example:8448", "delegated-plain.example", "delegated-plain.example"}},
		{"wk-srv-dotted.example", target{"dotted.example:8448", "dotted.example", "dotted.example"}},
		// An invalid well-known is skipped: steps 4 to 6 on the name itself.
		{"wk-bad.example", target{"wk-bad.example:8448", "wk-bad.example", "wk-bad.example"}},
		{"wk-notjson.example", target{"wk-notjson.example:8448", "wk-notjson.example", "wk-notjson.example"}},
		{"wk-404.example", target{"fed.wk-404.example:8002", "wk-404.example", "wk-404.example"}},
		{"wk-refused.example", target{"old.wk-refused.example:8003", "wk-refused.example", "wk-refused.example"}},
	}
	now := time.Unix(1_700_000_000, 0)
	r := fn.resolver(&now)
	for _, c := range cases {
		got, err := r.resolve(context.Background(), spec.ServerName(c.name))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !reflect.DeepEqual(got, []target{c.want}) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, []target{c.want})
		}
	}
	for _, bad := range []string{"", "a b", "example.org:99999x", "[::1"} {
		if _, err := r.resolve(context.Background(), spec.ServerName(bad)); err == nil {
			t.Errorf("%q resolved", bad)
		}
	}
}

func TestResolveCachesWellKnown(t *testing.T) {
	fn := &fakeNet{
		wellKnown: map[string]string{"a.example": `{"m.server": "b.example:443"}`},
		header:    http.Header{"Cache-Control": {"public, max-age=3600"}},
	}
	now := time.Unix(1_700_000_000, 0)
	r := fn.resolver(&now)
	resolve := func() []target {
		t.Helper()
		got, err := r.resolve(context.Background(), "a.example")
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	resolve()
	now = now.Add(50 * time.Minute)
	resolve()
	r.forget("a.example") // a failed request drops the targets, not the well-known
	resolve()
	if fn.wkCalls != 1 {
		t.Fatalf("well-known fetched %d times within its max-age, want 1", fn.wkCalls)
	}
	now = now.Add(11 * time.Minute)
	resolve()
	if fn.wkCalls != 2 {
		t.Fatalf("well-known fetched %d times after its max-age, want 2", fn.wkCalls)
	}

	// A server that does not answer at all is asked again after a short
	// time that doubles, up to an hour.
	fn.wellKnown["down.example"] = "refused"
	calls := fn.wkCalls
	var gaps []time.Duration
	last := now
	for i := 0; i < 8; i++ {
		if _, err := r.resolve(context.Background(), "down.example"); err != nil {
			t.Fatal(err)
		}
		if fn.wkCalls > calls {
			gaps = append(gaps, now.Sub(last))
			last, calls = now, fn.wkCalls
		}
		now = now.Add(time.Minute)
	}
	want := []time.Duration{0, 2 * time.Minute, 4 * time.Minute}
	if !reflect.DeepEqual(gaps, want) {
		t.Fatalf("well-known retries after %v, want %v", gaps, want)
	}
}

func TestCacheTTL(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	cases := []struct {
		header http.Header
		want   time.Duration
	}{
		{http.Header{}, wellKnownDefaultTTL},
		{http.Header{"Cache-Control": {"max-age=7200"}}, 2 * time.Hour},
		{http.Header{"Cache-Control": {"max-age=999999999"}}, wellKnownMaxTTL},
		{http.Header{"Cache-Control": {"max-age=1"}}, wellKnownMinTTL},
		{http.Header{"Cache-Control": {"no-store"}}, wellKnownMinTTL},
		{http.Header{"Expires": {now.Add(3 * time.Hour).UTC().Format(http.TimeFormat)}}, 3 * time.Hour},
		{http.Header{"Expires": {"garbage"}}, wellKnownDefaultTTL},
		// max-age wins over Expires.
		{http.Header{"Cache-Control": {"max-age=3600"}, "Expires": {now.Add(3 * time.Hour).UTC().Format(http.TimeFormat)}}, time.Hour},
	}
	for _, c := range cases {
		if got := cacheTTL(c.header, now); got != c.want {
			t.Errorf("%v: %v, want %v", c.header, got, c.want)
		}
	}
}
