package mediaapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"
)

// alwaysBlocked are ranges that outbound fetches chosen by users or other
// servers (URL previews, media redirects) must never reach: they are this
// machine or its private network, or not real destinations.
var alwaysBlocked = mustCIDRs(
	"0.0.0.0/8",       // "this network", includes the unspecified address
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // carrier-grade NAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local (cloud metadata services live here)
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation
	"203.0.113.0/24",  // documentation
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, and broadcast
	"::/128",          // unspecified
	"::1/128",         // loopback
	"64:ff9b::/96",    // NAT64 (embeds IPv4 addresses, private ones included)
	"100::/64",        // discard
	"2001:db8::/32",   // documentation
	"fc00::/7",        // unique local (private)
	"fe80::/10",       // link-local
	"ff00::/8",        // multicast
)

func mustCIDRs(ranges ...string) []*net.IPNet {
	nets, err := parseCIDRs(ranges)
	if err != nil {
		panic(err)
	}
	return nets
}

func parseCIDRs(ranges []string) ([]*net.IPNet, error) {
	var out []*net.IPNet
	for _, r := range ranges {
		_, n, err := net.ParseCIDR(r)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR range", r)
		}
		out = append(out, n)
	}
	return out, nil
}

// ipBlocked reports whether ip is in an always blocked range or in extra.
// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
func ipBlocked(ip net.IP, extra []*net.IPNet) bool {
	if ip == nil {
		return true
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsMulticast() || ip.IsUnspecified() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	for _, set := range [][]*net.IPNet{alwaysBlocked, extra} {
		for _, n := range set {
			if n.Contains(ip) {
				return true
			}
		}
	}
	return false
}

var errBlockedAddress = errors.New("mediaapi: destination address is not allowed")

// guardedDialer checks the address actually dialled, after DNS
// resolution: a name that resolves to an internal address (or is changed
// to do so between a check and the connection, DNS rebinding) is refused
// at connect time.
func guardedDialer(extra []*net.IPNet) *net.Dialer {
	return &net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return errBlockedAddress
			}
			if ipBlocked(net.ParseIP(host), extra) {
				return fmt.Errorf("%w: %s", errBlockedAddress, host)
			}
			return nil
		},
	}
}

// newGuardedClient is an HTTP client that cannot reach blocked addresses,
// uses no proxy from the environment, and follows at most 5 redirects.
func newGuardedClient(extra []*net.IPNet, timeout time.Duration) *http.Client {
	d := guardedDialer(extra)
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 15 * time.Second,
			MaxIdleConns:          10,
			IdleConnTimeout:       30 * time.Second,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return errors.New("redirect to a scheme other than http(s)")
			}
			return nil
		},
	}
}
