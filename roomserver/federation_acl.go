package roomserver

import (
	"context"
	"net"
	"strings"

	"github.com/tidwall/gjson"
)

// aclEventType is the server ACL event type.
const aclEventType = "m.room.server_acl"

// Server ACLs (m.room.server_acl): which servers may take part in a room
// over federation. The federation API refuses denied servers with 403.

// ServerACLAllows applies the room's current server ACL to a server.
func (r *Roomserver) ServerACLAllows(ctx context.Context, roomID, server string) (bool, error) {
	ev, err := r.CurrentStateEvent(ctx, roomID, aclEventType, "")
	if err != nil {
		return false, err
	}
	if ev == nil {
		return true, nil
	}
	return aclAllows(ev.Content(), server), nil
}

// aclAllows is the spec's order of checks (the m.room.server_acl
// event schema): an IP literal is denied when allow_ip_literals is false;
// then a match in deny denies, a match in allow allows, and anything else
// is denied. The port is never considered; patterns are case-insensitive
// globs. Entries that are not strings are ignored, and a content that is
// not an object denies everything, like a missing allow list.
func aclAllows(content []byte, server string) bool {
	c := gjson.ParseBytes(content)
	if !c.IsObject() {
		return false
	}
	host := strings.ToLower(aclServerHost(server))
	// allow_ip_literals defaults to true when missing or not a boolean.
	if ip := c.Get("allow_ip_literals"); ip.Type == gjson.False && aclIsIPLiteral(host) {
		return false
	}
	if aclMatchesAny(c.Get("deny"), host) {
		return false
	}
	return aclMatchesAny(c.Get("allow"), host)
}

func aclMatchesAny(list gjson.Result, host string) bool {
	if !list.IsArray() {
		return false
	}
	found := false
	list.ForEach(func(_, v gjson.Result) bool {
		if v.Type == gjson.String && aclGlobMatch(strings.ToLower(v.Str), host) {
			found = true
			return false
		}
		return true
	})
	return found
}

// aclServerHost is a server name without its port: "[::1]:8448" -> "[::1]",
// "example.org:8448" -> "example.org".
func aclServerHost(server string) string {
	if strings.HasPrefix(server, "[") {
		if end := strings.IndexByte(server, ']'); end >= 0 {
			return server[:end+1]
		}
		return server
	}
	if i := strings.LastIndexByte(server, ':'); i >= 0 {
		return server[:i]
	}
	return server
}

// aclIsIPLiteral reports whether a host (without port) is an IPv4 address or
// a bracketed IPv6 address.
func aclIsIPLiteral(host string) bool {
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		return net.ParseIP(host[1:len(host)-1]) != nil
	}
	return net.ParseIP(host) != nil
}

// aclGlobMatch matches s against a glob where '*' matches any run of
// characters (including none) and '?' any one character (the spec's
// glob-style matching). It runs in O(len(pattern)·len(s)) at worst.
func aclGlobMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]):
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
