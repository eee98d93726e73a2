package pushrules

import (
	_ "embed"
	"encoding/json"
	"strings"
	"sync"
)

// The server-default rules, written as the spec writes them (push.md,
// "Predefined Rules"), with its placeholders for the user. Besides the
// spec's v1.19 list they hold the three legacy mention rules the spec
// removed in v1.17 (MSC4210), in their old places:
// .m.rule.contains_display_name, .m.rule.roomnotif and
// .m.rule.contains_user_name. The spec lets servers define further
// default rules; these keep body mentions working for clients and bots
// that do not send m.mentions, and as the spec had it from v1.7 they
// never apply to an event that has m.mentions (see legacyMentionRules),
// so clients that send intentional mentions get exactly the v1.19
// behaviour. Users may disable them like any default rule.
//
//go:embed defaults.json
var defaultsJSON []byte

// Placeholders in defaults.json.
const (
	placeholderUserID    = "[the user's Matrix ID]"
	placeholderLocalpart = "[the local part of the user's Matrix ID]"
)

// legacyMentionRules are the default rules that look for mentions in the
// body; they do not apply to events with an m.mentions property.
var legacyMentionRules = map[string]bool{
	".m.rule.contains_display_name": true,
	".m.rule.roomnotif":             true,
	".m.rule.contains_user_name":    true,
}

// masterRuleID is the one default rule above the user's override rules.
const masterRuleID = ".m.rule.master"

var parsedDefaults = sync.OnceValue(func() Ruleset {
	var rs Ruleset
	if err := json.Unmarshal(defaultsJSON, &rs); err != nil {
		panic("pushrules: defaults.json: " + err.Error())
	}
	return rs
})

// Defaults returns the server-default rules for a user.
func Defaults(userID string) Ruleset {
	localpart := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(localpart, ':'); i >= 0 {
		localpart = localpart[:i]
	}
	subst := func(s string) string {
		s = strings.ReplaceAll(s, placeholderLocalpart, localpart)
		return strings.ReplaceAll(s, placeholderUserID, userID)
	}
	src := parsedDefaults()
	var out Ruleset
	for _, k := range Kinds {
		rules := *src.List(k)
		copied := make([]Rule, len(rules))
		for i, r := range rules {
			r.Actions = append([]json.RawMessage(nil), r.Actions...)
			if r.Pattern != nil {
				p := subst(*r.Pattern)
				r.Pattern = &p
			}
			if r.Conditions != nil {
				conds := make([]Condition, len(r.Conditions))
				for j, c := range r.Conditions {
					if c.Pattern != nil {
						p := subst(*c.Pattern)
						c.Pattern = &p
					}
					if strings.Contains(string(c.Value), placeholderUserID) {
						v, _ := json.Marshal(userID)
						c.Value = v
					}
					conds[j] = c
				}
				r.Conditions = conds
			}
			copied[i] = r
		}
		*out.List(k) = copied
	}
	return out
}

// IsDefaultID reports whether a rule ID is of the server-default form.
func IsDefaultID(id string) bool { return strings.HasPrefix(id, ".") }

// Merge combines a user's stored ruleset (nil when they never changed
// anything) with the current server-default rules: .m.rule.master, then
// the user's own rules of each kind in their order, then the other
// default rules, each default rule taking the enabled flag and actions the
// user gave it. Stored default rules the server no longer has are dropped,
// and rules the server adds appear, so stored rulesets survive changes to
// the defaults.
func Merge(stored *Ruleset, userID string) Ruleset {
	defaults := Defaults(userID)
	if stored == nil {
		return defaults
	}
	var out Ruleset
	for _, k := range Kinds {
		storedRules := *stored.List(k)
		user := make([]Rule, 0, len(storedRules))
		overrides := map[string]Rule{}
		for _, r := range storedRules {
			if IsDefaultID(r.RuleID) {
				overrides[r.RuleID] = r
				continue
			}
			if ValidateRuleID(r.RuleID) != nil {
				continue
			}
			r.Default = false
			r.Conditions = normaliseConditions(k, r.Conditions)
			if k != Content {
				r.Pattern = nil
			} else if r.Pattern == nil {
				continue // a content rule needs a pattern
			}
			user = append(user, r)
		}
		var head, tail []Rule
		for _, d := range *defaults.List(k) {
			if o, ok := overrides[d.RuleID]; ok {
				d.Enabled = o.Enabled
				if o.Actions != nil {
					d.Actions = o.Actions
				}
			}
			if k == Override && d.RuleID == masterRuleID {
				head = append(head, d)
			} else {
				tail = append(tail, d)
			}
		}
		*out.List(k) = append(append(head, user...), tail...)
	}
	return out
}

func normaliseConditions(k Kind, conds []Condition) []Condition {
	if k != Override && k != Underride {
		return nil
	}
	if conds == nil {
		return []Condition{}
	}
	return conds
}

// Load parses stored m.push_rules content (nil or empty when there is
// none) and merges it with the defaults. Content that does not parse is
// treated as no stored rules, with the error returned beside the usable
// ruleset so that the caller can log it.
func Load(stored []byte, userID string) (Ruleset, error) {
	if len(stored) == 0 {
		return Merge(nil, userID), nil
	}
	var doc Rules
	if err := json.Unmarshal(stored, &doc); err != nil {
		return Merge(nil, userID), err
	}
	return Merge(&doc.Global, userID), nil
}

// Encode is the m.push_rules content for a ruleset.
func Encode(rs Ruleset) (json.RawMessage, error) {
	return json.Marshal(Rules{Global: rs})
}
