// Package pushrules is the rule language of the push notifications module:
// the rule and ruleset types clients read and write, the server-default
// rules (defaults.go), edits to a user's ruleset (edit.go), and evaluation
// of events against compiled rules (evaluate.go). It is pure: callers load
// and store rulesets (the m.push_rules account data) and supply the few
// facts about a room that conditions ask for (Env).
package pushrules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Kind is the kind of a push rule; kinds are evaluated in the order of
// Kinds.
type Kind string

const (
	Override  Kind = "override"
	Content   Kind = "content"
	Room      Kind = "room"
	Sender    Kind = "sender"
	Underride Kind = "underride"
)

// Kinds in the order they are evaluated.
var Kinds = []Kind{Override, Content, Room, Sender, Underride}

// ParseKind accepts the name of a kind.
func ParseKind(s string) (Kind, bool) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, true
		}
	}
	return "", false
}

// Condition kinds the spec defines. Others never match.
const (
	CondEventMatch                   = "event_match"
	CondEventPropertyIs              = "event_property_is"
	CondEventPropertyContains        = "event_property_contains"
	CondContainsDisplayName          = "contains_display_name"
	CondRoomMemberCount              = "room_member_count"
	CondSenderNotificationPermission = "sender_notification_permission"
)

// Condition is one condition of an override or underride rule.
type Condition struct {
	Kind string `json:"kind"`
	// Key is the dot-separated event property (event_match,
	// event_property_is, event_property_contains) or the power level
	// notification key (sender_notification_permission).
	Key string `json:"key,omitempty"`
	// Pattern is event_match's glob; "" is a valid pattern, hence the pointer.
	Pattern *string `json:"pattern,omitempty"`
	// Is is room_member_count's comparison, e.g. "2" or ">=10".
	Is string `json:"is,omitempty"`
	// Value is the event_property_is / _contains value: a string, an
	// integer, a boolean or null (kept as "null").
	Value json.RawMessage `json:"value,omitempty"`
}

// Rule is a push rule as clients see it.
type Rule struct {
	RuleID  string            `json:"rule_id"`
	Default bool              `json:"default"`
	Enabled bool              `json:"enabled"`
	Actions []json.RawMessage `json:"actions"`
	// Conditions are those of override and underride rules, where they are
	// always present (possibly empty); nil for the other kinds.
	Conditions []Condition `json:"conditions,omitempty"`
	// Pattern is a content rule's glob.
	Pattern *string `json:"pattern,omitempty"`
}

// MarshalJSON writes conditions whenever they are non-nil, empty or not,
// and actions as an array even when there are none.
func (r Rule) MarshalJSON() ([]byte, error) {
	type plain struct {
		RuleID     string            `json:"rule_id"`
		Default    bool              `json:"default"`
		Enabled    bool              `json:"enabled"`
		Actions    []json.RawMessage `json:"actions"`
		Conditions *[]Condition      `json:"conditions,omitempty"`
		Pattern    *string           `json:"pattern,omitempty"`
	}
	p := plain{RuleID: r.RuleID, Default: r.Default, Enabled: r.Enabled, Actions: r.Actions, Pattern: r.Pattern}
	if p.Actions == nil {
		p.Actions = []json.RawMessage{}
	}
	if r.Conditions != nil {
		p.Conditions = &r.Conditions
	}
	return json.Marshal(p)
}

// Ruleset is the rules of one scope (only "global" exists), by kind, each
// list most important first.
type Ruleset struct {
	Override  []Rule `json:"override"`
	Content   []Rule `json:"content"`
	Room      []Rule `json:"room"`
	Sender    []Rule `json:"sender"`
	Underride []Rule `json:"underride"`
}

// MarshalJSON writes every kind, empty ones as [].
func (rs Ruleset) MarshalJSON() ([]byte, error) {
	type plain Ruleset
	p := plain(rs)
	for _, l := range []*[]Rule{&p.Override, &p.Content, &p.Room, &p.Sender, &p.Underride} {
		if *l == nil {
			*l = []Rule{}
		}
	}
	return json.Marshal(p)
}

// List returns the rules of a kind, for reading and replacing.
func (rs *Ruleset) List(k Kind) *[]Rule {
	switch k {
	case Override:
		return &rs.Override
	case Content:
		return &rs.Content
	case Room:
		return &rs.Room
	case Sender:
		return &rs.Sender
	case Underride:
		return &rs.Underride
	}
	return nil
}

// Rules is the content of the m.push_rules account data: the rulesets by
// scope.
type Rules struct {
	Global Ruleset `json:"global"`
}

// AccountDataType is the account data type push rules are stored as.
const AccountDataType = "m.push_rules"

// Errors about what a client sent. Wrapped with the field concerned; the
// HTTP layer maps them to M_MISSING_PARAM, M_BAD_JSON and M_INVALID_PARAM.
var (
	ErrMissing   = errors.New("missing")
	ErrWrongType = errors.New("wrong type")
	ErrInvalid   = errors.New("invalid")
)

func missing(field string) error { return fmt.Errorf("%w: %s", ErrMissing, field) }
func wrongType(field, want string) error {
	return fmt.Errorf("%w: %s must be %s", ErrWrongType, field, want)
}
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Limits on what a client may store, so that a ruleset stays small enough
// to load and compile for every event.
const (
	MaxRuleIDLength  = 255
	MaxPatternLength = 1024
	MaxConditions    = 32
	MaxActions       = 32
)

// ValidateRuleID checks the ID of a rule a client creates: not empty, no
// slashes or backslashes, and not starting with a dot (ErrReservedID),
// which marks server-default rules.
func ValidateRuleID(id string) error {
	switch {
	case id == "":
		return missing("rule_id")
	case strings.HasPrefix(id, "."):
		return ErrReservedID
	case strings.ContainsAny(id, `/\`):
		return invalid("rule_id must not contain slashes or backslashes")
	case len(id) > MaxRuleIDLength || !utf8.ValidString(id) || strings.ContainsRune(id, 0):
		return invalid("rule_id must be UTF-8 text of at most %d bytes", MaxRuleIDLength)
	}
	return nil
}

// ParseRule builds a user-defined rule of a kind from the fields of a PUT
// body: actions always, conditions for override and underride (absent is
// none), pattern for content rules. Fields other kinds do not use are
// ignored. The rule is enabled.
func ParseRule(kind Kind, ruleID string, body map[string]json.RawMessage) (Rule, error) {
	r := Rule{RuleID: ruleID, Enabled: true}
	raw, ok := body["actions"]
	if !ok {
		return r, missing("actions")
	}
	var err error
	if r.Actions, err = ParseActions(raw); err != nil {
		return r, err
	}
	switch kind {
	case Override, Underride:
		r.Conditions = []Condition{}
		if raw, ok := body["conditions"]; ok && !isNull(raw) {
			if r.Conditions, err = ParseConditions(raw); err != nil {
				return r, err
			}
		}
	case Content:
		raw, ok := body["pattern"]
		if !ok || isNull(raw) {
			return r, missing("pattern")
		}
		var p string
		if json.Unmarshal(raw, &p) != nil {
			return r, wrongType("pattern", "a string")
		}
		if len(p) > MaxPatternLength {
			return r, invalid("pattern is longer than %d bytes", MaxPatternLength)
		}
		r.Pattern = &p
	}
	return r, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// Action names. dont_notify and coalesce are historical: accepted, kept as
// sent, and ignored.
const (
	ActionNotify     = "notify"
	ActionDontNotify = "dont_notify"
	ActionCoalesce   = "coalesce"
)

// ParseActions checks a rule's actions: "notify", the historical
// "dont_notify" and "coalesce", and {"set_tweak": name, "value": any}.
// They are returned compacted, as sent.
func ParseActions(raw json.RawMessage) ([]json.RawMessage, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil || list == nil {
		return nil, wrongType("actions", "an array")
	}
	if len(list) > MaxActions {
		return nil, invalid("at most %d actions", MaxActions)
	}
	out := make([]json.RawMessage, 0, len(list))
	for _, a := range list {
		var name string
		if json.Unmarshal(a, &name) == nil {
			switch name {
			case ActionNotify, ActionDontNotify, ActionCoalesce:
			default:
				return nil, invalid("unknown action %q", name)
			}
		} else {
			var obj map[string]json.RawMessage
			if json.Unmarshal(a, &obj) != nil || obj == nil {
				return nil, invalid("an action must be a string or an object")
			}
			var tweak string
			if json.Unmarshal(obj["set_tweak"], &tweak) != nil || tweak == "" {
				return nil, invalid("an action object must have a set_tweak name")
			}
			for k := range obj {
				if k != "set_tweak" && k != "value" {
					return nil, invalid("unknown action field %q", k)
				}
			}
		}
		var b bytes.Buffer
		if err := json.Compact(&b, a); err != nil {
			return nil, wrongType("actions", "JSON")
		}
		out = append(out, b.Bytes())
	}
	return out, nil
}

// ParseConditions checks an override or underride rule's conditions. The
// spec's kinds must carry their parameters; other kinds are kept (with
// their kind only) and never match.
func ParseConditions(raw json.RawMessage) ([]Condition, error) {
	var list []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, wrongType("conditions", "an array of objects")
	}
	if len(list) > MaxConditions {
		return nil, invalid("at most %d conditions", MaxConditions)
	}
	out := make([]Condition, 0, len(list))
	for _, obj := range list {
		c, err := parseCondition(obj)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func parseCondition(obj map[string]json.RawMessage) (Condition, error) {
	var c Condition
	str := func(field string, required bool) (string, bool, error) {
		raw, ok := obj[field]
		if !ok || isNull(raw) {
			if required {
				return "", false, missing("condition " + field)
			}
			return "", false, nil
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false, wrongType("condition "+field, "a string")
		}
		return s, true, nil
	}
	kind, _, err := str("kind", true)
	if err != nil {
		return c, err
	}
	c.Kind = kind
	switch kind {
	case CondEventMatch:
		if c.Key, _, err = str("key", true); err != nil {
			return c, err
		}
		p, _, err := str("pattern", true)
		if err != nil {
			return c, err
		}
		if len(p) > MaxPatternLength {
			return c, invalid("pattern is longer than %d bytes", MaxPatternLength)
		}
		c.Pattern = &p
	case CondEventPropertyIs, CondEventPropertyContains:
		if c.Key, _, err = str("key", true); err != nil {
			return c, err
		}
		raw, ok := obj["value"]
		if !ok {
			return c, missing("condition value")
		}
		if _, ok := parseScalar(raw); !ok {
			return c, invalid("condition value must be a string, an integer, a boolean or null")
		}
		var b bytes.Buffer
		_ = json.Compact(&b, raw)
		c.Value = b.Bytes()
	case CondRoomMemberCount:
		if c.Is, _, err = str("is", true); err != nil {
			return c, err
		}
		if _, _, ok := parseIs(c.Is); !ok {
			return c, invalid("room_member_count's is must be a number, optionally after ==, <, >, <= or >=")
		}
	case CondSenderNotificationPermission:
		if c.Key, _, err = str("key", true); err != nil {
			return c, err
		}
	case CondContainsDisplayName:
	}
	return c, nil
}

// ErrReservedID is a client's attempt to create a rule whose ID starts
// with a dot, the mark of server-default rules.
var ErrReservedID = errors.New("rule IDs starting with a dot are reserved for server-default rules")
