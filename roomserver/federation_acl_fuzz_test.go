package roomserver

import (
	"strings"
	"testing"
)

// FuzzServerACL feeds arbitrary ACL contents and server names to the ACL
// check: it must never panic, and a content that allows everything and
// denies nothing must allow any name that is not an IP literal.
func FuzzServerACL(f *testing.F) {
	f.Add(`{"allow":["*"],"deny":["evil.com"]}`, "evil.com:8448")
	f.Add(`{"allow":["?.*.org"],"allow_ip_literals":false}`, "[::1]:8448")
	f.Add(`{"allow":[1,null,"***?***"]}`, "a")
	f.Add(`nope`, "")
	f.Fuzz(func(t *testing.T, content, server string) {
		aclAllows([]byte(content), server)
		if !aclIsIPLiteral(strings.ToLower(aclServerHost(server))) && !aclAllows([]byte(`{"allow":["*"]}`), server) {
			t.Fatalf("allow * refused %q", server)
		}
	})
}

// FuzzGlob checks the glob matcher against the obvious facts: a pattern
// without wildcards matches only itself, and "*" around anything matches
// any string containing it.
func FuzzGlob(f *testing.F) {
	f.Add("a*b?c", "axxbyc")
	f.Add("", "")
	f.Add("***", "abc")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		got := aclGlobMatch(pattern, s)
		if !strings.ContainsAny(pattern, "*?") && got != (pattern == s) {
			t.Fatalf("aclGlobMatch(%q, %q) = %v", pattern, s, got)
		}
		if !strings.ContainsAny(pattern, "*?") && !aclGlobMatch("*"+pattern+"*", s) && strings.Contains(s, pattern) {
			t.Fatalf("*%s* does not match %q", pattern, s)
		}
	})
}
