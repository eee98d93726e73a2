package mediaapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestIPBlocked(t *testing.T) {
	extra := mustCIDRs("8.8.4.0/24")
	cases := []struct {
		ip      string
		blocked bool
	}{
		{"127.0.0.1", true},
		{"127.8.9.10", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true}, // IPv4-mapped loopback
		{"10.1.2.3", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"192.168.1.1", true},
		{"169.254.169.254", true}, // cloud metadata
		{"fe80::1", true},
		{"fc00::1", true},
		{"fd12:3456::1", true},
		{"0.0.0.0", true},
		{"::", true},
		{"224.0.0.1", true},
		{"ff02::1", true},
		{"100.64.0.1", true},
		{"255.255.255.255", true},
		{"64:ff9b::a00:1", true}, // NAT64 of 10.0.0.1
		{"8.8.4.4", true},        // configured range
		{"8.8.8.8", false},
		{"1.1.1.1", false},
		{"172.32.0.1", false},
		{"2606:4700:4700::1111", false},
		{"::ffff:1.1.1.1", false},
	}
	for _, c := range cases {
		if got := ipBlocked(net.ParseIP(c.ip), extra); got != c.blocked {
			t.Errorf("ipBlocked(%s) = %v, want %v", c.ip, got, c.blocked)
		}
	}
	if !ipBlocked(nil, nil) {
		t.Error("an unparsable address must be blocked")
	}
}

// The guard runs at connect time on the resolved address: a host name
// that resolves to loopback is refused as surely as the literal.
func TestGuardedClientRefusesLoopbackByNameAndLiteral(t *testing.T) {
	hit := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit = true }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	c := newGuardedClient(nil, 5*time.Second)
	for _, u := range []string{srv.URL, "http://localhost:" + port + "/"} {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", u, nil)
		_, err := c.Do(req)
		if !errors.Is(err, errBlockedAddress) {
			t.Errorf("GET %s: err = %v, want errBlockedAddress", u, err)
		}
	}
	if hit {
		t.Fatal("the loopback server was reached")
	}
}

func TestParseOpenGraph(t *testing.T) {
	page := `<!doctype html><html><head>
<title>
  The   page title </title>
<meta property="og:title" content="OG title">
<meta property="og:description" content="About &amp; more">
<meta name="og:site_name" content="Site">
<meta property="og:image" content="/img.png">
<meta property="twitter:card" content="ignored">
</head><body><meta property="og:late" content="ignored"></body></html>`
	og := parseOpenGraph(stringsReader(page))
	want := map[string]string{"og:title": "OG title", "og:description": "About & more", "og:site_name": "Site", "og:image": "/img.png"}
	if len(og) != len(want) {
		t.Fatalf("got %v", og)
	}
	for k, v := range want {
		if og[k] != v {
			t.Errorf("%s = %v, want %q", k, og[k], v)
		}
	}
	og = parseOpenGraph(stringsReader("<html><head><title>Only\n a title</title></head>"))
	if og["og:title"] != "Only a title" {
		t.Errorf("title fallback: %v", og)
	}
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
