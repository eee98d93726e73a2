package clientapi_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

const pushRulesPrefix = "/_matrix/client/v3/pushrules"

// prPath is the path of a rule, its ID escaped.
func prPath(kind, ruleID string, rest ...string) string {
	p := pushRulesPrefix + "/global/" + kind + "/" + url.PathEscape(ruleID)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// prIDs lists the rule IDs of a kind in GET /pushrules/.
func prIDs(t *testing.T, s *testserver.Server, u *testserver.User, kind string) []string {
	t.Helper()
	var ids []string
	s.MustOK("GET", pushRulesPrefix+"/", u.AccessToken, nil).Get("global." + kind + ".#.rule_id").ForEach(func(_, v gjson.Result) bool {
		ids = append(ids, v.String())
		return true
	})
	return ids
}

func TestPushRulesRead(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("alice", "pw")

	all := s.MustOK("GET", pushRulesPrefix+"/", u.AccessToken, nil).JSON()
	global := all.Get("global")
	for _, kind := range []string{"override", "content", "room", "sender", "underride"} {
		if !global.Get(kind).IsArray() {
			t.Fatalf("no %s list: %s", kind, global.Raw)
		}
	}
	if global.Get("override.0.rule_id").String() != ".m.rule.master" || global.Get("override.0.enabled").Bool() ||
		!global.Get("override.0.conditions").IsArray() || !global.Get("override.0.default").Bool() {
		t.Fatalf("master rule: %s", global.Get("override.0").Raw)
	}
	for _, id := range []string{".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event", ".m.rule.is_user_mention",
		".m.rule.is_room_mention", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"} {
		if !global.Get("override.#(rule_id==" + id + ")").Exists() {
			t.Errorf("default override %s missing", id)
		}
	}
	for _, id := range []string{".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"} {
		if !global.Get("underride.#(rule_id==" + id + ")").Exists() {
			t.Errorf("default underride %s missing", id)
		}
	}
	mention := global.Get(`override.#(rule_id==.m.rule.is_user_mention).conditions.0.value`).String()
	if mention != u.UserID {
		t.Fatalf("is_user_mention names %q", mention)
	}
	if p := global.Get(`content.#(rule_id==.m.rule.contains_user_name).pattern`).String(); p != "alice" {
		t.Fatalf("contains_user_name pattern %q", p)
	}
	if _, ok := global.Get("content.0").Map()["conditions"]; ok {
		t.Fatalf("a content rule with conditions: %s", global.Get("content.0").Raw)
	}

	// The scope and kind listings, and a rule with its attributes.
	if got := s.MustOK("GET", pushRulesPrefix+"/global/", u.AccessToken, nil).JSON(); got.Raw != global.Raw {
		t.Fatalf("GET /pushrules/global/ differs:\n%s\n%s", got.Raw, global.Raw)
	}
	if got := s.MustOK("GET", pushRulesPrefix+"/global/underride/", u.AccessToken, nil).JSON(); got.Raw != global.Get("underride").Raw {
		t.Fatalf("GET /pushrules/global/underride/: %s", got.Raw)
	}
	rule := s.MustOK("GET", prPath("underride", ".m.rule.message"), u.AccessToken, nil).JSON()
	if rule.Raw != global.Get(`underride.#(rule_id==.m.rule.message)`).Raw {
		t.Fatalf("GET rule: %s", rule.Raw)
	}
	if r := s.MustOK("GET", prPath("underride", ".m.rule.message", "enabled"), u.AccessToken, nil); r.JSON().Raw != `{"enabled":true}` {
		t.Fatalf("enabled: %s", r.Body)
	}
	if r := s.MustOK("GET", prPath("underride", ".m.rule.message", "actions"), u.AccessToken, nil); r.JSON().Raw != `{"actions":["notify"]}` {
		t.Fatalf("actions: %s", r.Body)
	}
	// The r0 prefix and the query-string token work too.
	s.MustOK("GET", "/_matrix/client/r0/pushrules/?access_token="+u.AccessToken, "", nil)
}

func TestPushRulesEdit(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("alice", "pw")
	put := func(kind, id string, body any, query string) {
		t.Helper()
		s.MustOK("PUT", prPath(kind, id)+query, u.AccessToken, body)
	}
	notify := map[string]any{"actions": []any{"notify"}}

	// New rules go first; before and after place them (as SyTest checks).
	put("room", "#a:example.com", notify, "")
	put("room", "#b:example.com", notify, "")
	put("room", "#c:example.com", notify, "?before="+url.QueryEscape("#a:example.com"))
	put("room", "#d:example.com", notify, "?after="+url.QueryEscape("#a:example.com"))
	if got := prIDs(t, s, u, "room"); strings.Join(got, " ") != "#b:example.com #c:example.com #a:example.com #d:example.com" {
		t.Fatalf("room rules %q", got)
	}
	r := s.MustOK("GET", prPath("room", "#a:example.com"), u.AccessToken, nil).JSON()
	if r.Get("rule_id").String() != "#a:example.com" || !r.Get("enabled").Bool() || r.Get("default").Bool() ||
		r.Get("actions").Raw != `["notify"]` || r.Get("conditions").Exists() || r.Get("pattern").Exists() {
		t.Fatalf("room rule: %s", r.Raw)
	}
	// Putting it again updates in place: one rule, its place kept.
	put("room", "#a:example.com", map[string]any{"actions": []any{}}, "")
	if got := prIDs(t, s, u, "room"); len(got) != 4 || got[2] != "#a:example.com" {
		t.Fatalf("room rules after an update %q", got)
	}
	s.MustOK("DELETE", prPath("room", "#b:example.com"), u.AccessToken, nil)
	if got := prIDs(t, s, u, "room"); strings.Join(got, " ") != "#c:example.com #a:example.com #d:example.com" {
		t.Fatalf("room rules after a delete %q", got)
	}

	// Every kind, with what it needs.
	put("sender", "@bob:example.com", notify, "")
	put("content", "тест", map[string]any{"pattern": "тест", "actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "bing"}}}, "")
	put("override", "my_override", map[string]any{"actions": []any{"notify"},
		"conditions": []any{map[string]any{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}}}, "")
	put("underride", "my_underride", map[string]any{"actions": []any{}}, "")
	if got := prIDs(t, s, u, "override"); len(got) < 2 || got[0] != ".m.rule.master" || got[1] != "my_override" {
		t.Fatalf("user overrides go after the master rule only: %q", got)
	}
	if got := prIDs(t, s, u, "underride"); got[0] != "my_underride" {
		t.Fatalf("user underrides go first: %q", got)
	}
	c := s.MustOK("GET", prPath("content", "тест"), u.AccessToken, nil).JSON()
	if c.Get("pattern").String() != "тест" || c.Get("actions.1.value").String() != "bing" {
		t.Fatalf("content rule: %s", c.Raw)
	}
	if o := s.MustOK("GET", prPath("underride", "my_underride"), u.AccessToken, nil).JSON(); o.Get("conditions").Raw != "[]" {
		t.Fatalf("an underride without conditions: %s", o.Raw)
	}

	// Enabled and actions, of user and default rules; the historical
	// dont_notify is kept as sent.
	s.MustOK("PUT", prPath("sender", "@bob:example.com", "enabled"), u.AccessToken, map[string]any{"enabled": false})
	if r := s.MustOK("GET", prPath("sender", "@bob:example.com", "enabled"), u.AccessToken, nil); r.JSON().Raw != `{"enabled":false}` {
		t.Fatalf("disabled: %s", r.Body)
	}
	put("sender", "@bob:example.com", notify, "")
	if s.MustOK("GET", prPath("sender", "@bob:example.com"), u.AccessToken, nil).Get("enabled").Bool() {
		t.Fatal("an update enabled a disabled rule")
	}
	for _, id := range []string{".m.rule.master", ".m.rule.suppress_edits"} {
		s.MustOK("PUT", prPath("override", id, "enabled"), u.AccessToken, map[string]any{"enabled": true})
		s.MustOK("PUT", prPath("override", id, "actions"), u.AccessToken, map[string]any{"actions": []any{"dont_notify"}})
		if r := s.MustOK("GET", prPath("override", id, "actions"), u.AccessToken, nil); r.JSON().Raw != `{"actions":["dont_notify"]}` {
			t.Fatalf("%s actions: %s", id, r.Body)
		}
		if r := s.MustOK("GET", prPath("override", id), u.AccessToken, nil).JSON(); !r.Get("enabled").Bool() || !r.Get("default").Bool() {
			t.Fatalf("%s: %s", id, r.Raw)
		}
	}

	// The rules are stored as m.push_rules account data, which clients can
	// read but not write.
	ad := s.MustOK("GET", "/_matrix/client/v3/user/"+url.PathEscape(u.UserID)+"/account_data/m.push_rules", u.AccessToken, nil).JSON()
	if ad.Get("global.sender.0.rule_id").String() != "@bob:example.com" || !ad.Get("global.override.0.enabled").Bool() {
		t.Fatalf("account data: %s", ad.Raw)
	}
	s.ExpectError(405, "M_BAD_JSON", "PUT", "/_matrix/client/v3/user/"+url.PathEscape(u.UserID)+"/account_data/m.push_rules", u.AccessToken, map[string]any{})

	// Another user's rules are their own.
	bob := s.Register("bob", "pw")
	if got := prIDs(t, s, bob, "room"); len(got) != 0 {
		t.Fatalf("bob sees alice's rules: %q", got)
	}
}

func TestPushRulesErrors(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("alice", "pw")
	notify := map[string]any{"actions": []any{"notify"}}
	s.MustOK("PUT", prPath("room", "#a:example.com"), u.AccessToken, notify)
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
		errcode      string
	}{
		// Paths (SyTest's 80torture.pl has most of these).
		{"GET", pushRulesPrefix, nil, 404, "M_UNRECOGNIZED"},
		{"GET", pushRulesPrefix + "/global", nil, 400, "M_INVALID_PARAM"},
		{"GET", pushRulesPrefix + "/global/room", nil, 400, "M_INVALID_PARAM"},
		{"GET", pushRulesPrefix + "/not_a_scope/", nil, 400, "M_INVALID_PARAM"},
		{"GET", pushRulesPrefix + "/device/", nil, 400, "M_INVALID_PARAM"},
		{"GET", pushRulesPrefix + "/global/not_a_template/", nil, 400, "M_INVALID_PARAM"},
		{"GET", prPath("override", ".m.rule.master", "not_an_attr"), nil, 400, "M_INVALID_PARAM"},
		{"GET", prPath("override", ".m.rule.master", "enabled", "x"), nil, 400, "M_INVALID_PARAM"},
		{"GET", prPath("override", "not_a_rule_id"), nil, 404, "M_NOT_FOUND"},
		{"GET", prPath("room", "#a:example.com", "nope"), nil, 400, "M_INVALID_PARAM"},
		{"GET", prPath("sender", "#a:example.com"), nil, 404, "M_NOT_FOUND"},
		{"GET", prPath("override", "not_a_rule_id", "enabled"), nil, 404, "M_NOT_FOUND"},
		{"GET", prPath("override", "not_a_rule_id", "actions"), nil, 404, "M_NOT_FOUND"},
		{"PUT", pushRulesPrefix + "/", map[string]any{}, 400, "M_INVALID_PARAM"},
		{"PUT", pushRulesPrefix + "/not_a_scope/room/x", notify, 400, "M_INVALID_PARAM"},
		{"PUT", pushRulesPrefix + "/global", notify, 400, "M_INVALID_PARAM"},
		{"PUT", pushRulesPrefix + "/global/", notify, 400, "M_INVALID_PARAM"},
		{"PUT", pushRulesPrefix + "/global/room", notify, 400, "M_INVALID_PARAM"},
		{"PUT", pushRulesPrefix + "/global/room/", notify, 400, "M_INVALID_PARAM"},
		{"PUT", pushRulesPrefix + "/global/not_a_template/foo", notify, 400, "M_INVALID_PARAM"},
		{"DELETE", pushRulesPrefix + "/global/room/", nil, 400, "M_INVALID_PARAM"},
		{"POST", pushRulesPrefix + "/global/room/x", notify, 405, "M_UNRECOGNIZED"},
		// Rule IDs.
		{"PUT", prPath("room", `#fo\o:example.com`), notify, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("room", "a/b"), notify, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("override", ".m.rule.master"), notify, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("override", ".my.rule"), notify, 400, "M_INVALID_PARAM"},
		// Bodies.
		{"PUT", prPath("room", "#r:example.com"), "not json", 400, "M_NOT_JSON"},
		{"PUT", prPath("room", "#r:example.com"), []any{}, 400, "M_NOT_JSON"},
		{"PUT", prPath("room", "#r:example.com"), map[string]any{}, 400, "M_MISSING_PARAM"},
		{"PUT", prPath("override", "my_id"), map[string]any{}, 400, "M_MISSING_PARAM"},
		{"PUT", prPath("room", "#r:example.com"), map[string]any{"actions": "notify"}, 400, "M_BAD_JSON"},
		{"PUT", prPath("room", "#r:example.com"), map[string]any{"actions": []any{"not_an_action"}}, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("room", "#r:example.com"), map[string]any{"actions": []any{map[string]any{"value": 1}}}, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("underride", "my_id"), map[string]any{"actions": []any{}, "conditions": []any{map[string]any{}}}, 400, "M_MISSING_PARAM"},
		{"PUT", prPath("underride", "my_id"), map[string]any{"actions": []any{}, "conditions": "x"}, 400, "M_BAD_JSON"},
		{"PUT", prPath("override", "my_id"), map[string]any{"actions": []any{},
			"conditions": []any{map[string]any{"kind": "event_match", "key": "type"}}}, 400, "M_MISSING_PARAM"},
		{"PUT", prPath("override", "my_id"), map[string]any{"actions": []any{},
			"conditions": []any{map[string]any{"kind": "room_member_count", "is": "lots"}}}, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("override", "my_id"), map[string]any{"actions": []any{},
			"conditions": []any{map[string]any{"kind": "event_property_is", "key": "content.x", "value": map[string]any{}}}}, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("content", "my_id"), notify, 400, "M_MISSING_PARAM"},
		{"PUT", prPath("content", "my_id"), map[string]any{"actions": []any{}, "pattern": 1}, 400, "M_BAD_JSON"},
		// Placement.
		{"PUT", prPath("room", "#r:example.com") + "?before=" + url.QueryEscape("#nope:example.com"), notify, 400, "M_UNKNOWN"},
		{"PUT", prPath("room", "#r:example.com") + "?after=" + url.QueryEscape("#nope:example.com"), notify, 400, "M_UNKNOWN"},
		{"PUT", prPath("override", "my_id") + "?after=.m.rule.master", notify, 400, "M_UNKNOWN"},
		// Enabled and actions.
		{"PUT", prPath("override", ".m.rule.master", "not_an_attr"), map[string]any{"enabled": true}, 400, "M_INVALID_PARAM"},
		{"PUT", prPath("override", ".m.rule.master", "enabled"), map[string]any{"enabled": "not a boolean"}, 400, "M_BAD_JSON"},
		{"PUT", prPath("override", ".m.rule.master", "enabled"), map[string]any{}, 400, "M_MISSING_PARAM"},
		{"PUT", prPath("override", ".not.a.default.rule", "enabled"), map[string]any{"enabled": true}, 404, "M_NOT_FOUND"},
		{"PUT", prPath("override", ".not.a.default.rule", "actions"), notify, 404, "M_NOT_FOUND"},
		{"PUT", prPath("sender", "@bob:example.com", "actions"), notify, 404, "M_NOT_FOUND"},
		{"PUT", prPath("override", ".m.rule.master", "actions"), map[string]any{}, 400, "M_MISSING_PARAM"},
		{"PUT", prPath("override", ".m.rule.master", "actions"), map[string]any{"actions": []any{"ring"}}, 400, "M_INVALID_PARAM"},
		{"DELETE", prPath("override", ".m.rule.master", "enabled"), nil, 405, "M_UNRECOGNIZED"},
		// Deleting.
		{"DELETE", prPath("room", "#nope:example.com"), nil, 404, "M_NOT_FOUND"},
		{"DELETE", prPath("override", ".m.rule.master"), nil, 400, "M_UNKNOWN"},
		{"DELETE", prPath("underride", ".m.rule.message"), nil, 400, "M_UNKNOWN"},
	} {
		s.ExpectError(tc.status, tc.errcode, tc.method, tc.path, u.AccessToken, tc.body)
	}
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", pushRulesPrefix+"/", "", nil)
	// Nothing was changed by the failures.
	if got := prIDs(t, s, u, "room"); len(got) != 1 || got[0] != "#a:example.com" {
		t.Fatalf("room rules %q", got)
	}
	if got := prIDs(t, s, u, "override"); got[0] != ".m.rule.master" || len(got) != 12 {
		t.Fatalf("override rules %q", got)
	}
	if s.MustOK("GET", prPath("override", ".m.rule.master"), u.AccessToken, nil).Get("enabled").Bool() {
		t.Fatal("a failed request enabled the master rule")
	}
}

func TestPushRulesGuest(t *testing.T) {
	s := testserver.New(t)
	r := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	guest := r.Get("access_token").String()
	// Guests read the defaults but change nothing.
	s.MustOK("GET", pushRulesPrefix+"/", guest, nil)
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "PUT", prPath("room", "#a:example.com"), guest, map[string]any{"actions": []any{}})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "PUT", prPath("override", ".m.rule.master", "enabled"), guest, map[string]any{"enabled": true})
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "GET", "/_matrix/client/v3/pushers", guest, nil)
	s.ExpectError(403, "M_GUEST_ACCESS_FORBIDDEN", "GET", "/_matrix/client/v3/notifications", guest, nil)
}
