package pushrules

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
)

// Env supplies what conditions need to know beyond the event: facts about
// the room and the user whose rules are evaluated. Methods are called only
// when a condition needs them, so an implementation may compute them
// lazily (and share the room's facts between the room's users).
type Env interface {
	// MemberCount is the number of joined members of the room.
	MemberCount() int
	// SenderPowerLevel is the event sender's power level in the room
	// (math.MaxInt64 for creators of rooms whose creators are privileged).
	SenderPowerLevel() int64
	// NotificationPowerLevel is the level the power levels' notifications
	// object requires for a key (50 when unset).
	NotificationPowerLevel(key string) int64
	// DisplayName is the user's display name in the room, "" for none.
	DisplayName() string
}

// Event is an event being evaluated, for any number of users: lookups it
// needs for one user are kept for the next.
type Event struct {
	root   gjson.Result
	sender string
	fields map[string]gjson.Result
	// body is content.body when it is a string; lowerBody its lower case.
	body, lowerBody string
	hasBody         bool
	hasMentions     bool
}

// NewEvent wraps an event's JSON (federation or client format: the
// conditions read type, sender, state_key, room_id and content).
func NewEvent(eventJSON []byte) *Event {
	root := gjson.ParseBytes(eventJSON)
	e := &Event{root: root, sender: root.Get("sender").String(), fields: map[string]gjson.Result{}}
	content := root.Get("content")
	if b := content.Get("body"); b.Type == gjson.String {
		e.body, e.lowerBody, e.hasBody = b.Str, strings.ToLower(b.Str), true
	}
	e.hasMentions = content.IsObject() && content.Get(gjson.Escape("m.mentions")).Exists()
	return e
}

// path is a compiled dot-separated property path.
type path struct {
	key      string   // the path as written, for the lookup cache
	segments []string // property names, escaped for gjson
}

// compilePath splits a dot-separated path: a backslash escapes a dot or a
// backslash; other escapes are kept as they are.
func compilePath(key string) path {
	var segs []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '\\' && i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\'):
			cur.WriteByte(key[i+1])
			i++
		case c == '.':
			segs = append(segs, gjson.Escape(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	segs = append(segs, gjson.Escape(cur.String()))
	return path{key: key, segments: segs}
}

// field looks up a property: each step must be an object's key (never an
// array index).
func (e *Event) field(p path) gjson.Result {
	if v, ok := e.fields[p.key]; ok {
		return v
	}
	cur := e.root
	for _, s := range p.segments {
		if !cur.IsObject() {
			cur = gjson.Result{}
			break
		}
		cur = cur.Get(s)
		if !cur.Exists() {
			break
		}
	}
	e.fields[p.key] = cur
	return cur
}

// scalar is a non-compound canonical JSON value: the values
// event_property_is and event_property_contains compare.
type scalar struct {
	kind gjson.Type // String, Number (integers only), True, False, Null
	str  string
	num  int64
}

// maxSafeInteger bounds canonical JSON integers: [-(2**53)+1, (2**53)-1].
const maxSafeInteger = 1<<53 - 1

func scalarOf(v gjson.Result) (scalar, bool) {
	if !v.Exists() { // absent is not null
		return scalar{}, false
	}
	switch v.Type {
	case gjson.String:
		return scalar{kind: gjson.String, str: v.Str}, true
	case gjson.True, gjson.False, gjson.Null:
		return scalar{kind: v.Type}, true
	case gjson.Number:
		n, err := strconv.ParseInt(v.Raw, 10, 64)
		if err != nil || n > maxSafeInteger || n < -maxSafeInteger {
			return scalar{}, false
		}
		return scalar{kind: gjson.Number, num: n}, true
	}
	return scalar{}, false
}

func parseScalar(raw json.RawMessage) (scalar, bool) {
	if !gjson.ValidBytes(raw) {
		return scalar{}, false
	}
	return scalarOf(gjson.ParseBytes(raw))
}

// parseIs parses room_member_count's "is": an optional ==, <, >, <= or >=
// and a decimal integer.
func parseIs(is string) (op string, n int64, ok bool) {
	op = "=="
	for _, p := range []string{"==", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(is, p) {
			op, is = p, is[len(p):]
			break
		}
	}
	if is == "" || len(is) > 18 || strings.Trim(is, "0123456789") != "" {
		return "", 0, false
	}
	n, err := strconv.ParseInt(is, 10, 64)
	return op, n, err == nil
}

// cond is a compiled condition.
type cond func(e *Event, env Env) bool

func never(*Event, Env) bool { return false }

func compileCondition(c Condition) cond {
	switch c.Kind {
	case CondEventMatch:
		if c.Pattern == nil {
			return never
		}
		p := compilePath(c.Key)
		body := c.Key == "content.body"
		g := compileGlob(*c.Pattern, body)
		return func(e *Event, _ Env) bool {
			if body {
				return e.hasBody && g.match(e.body, e.lowerBody)
			}
			v := e.field(p)
			return v.Type == gjson.String && g.match(v.Str, "")
		}
	case CondEventPropertyIs, CondEventPropertyContains:
		want, ok := parseScalar(c.Value)
		if !ok {
			return never
		}
		p := compilePath(c.Key)
		if c.Kind == CondEventPropertyIs {
			return func(e *Event, _ Env) bool {
				got, ok := scalarOf(e.field(p))
				return ok && got == want
			}
		}
		return func(e *Event, _ Env) bool {
			v := e.field(p)
			if !v.IsArray() {
				return false
			}
			found := false
			v.ForEach(func(_, item gjson.Result) bool {
				got, ok := scalarOf(item)
				found = ok && got == want
				return !found
			})
			return found
		}
	case CondContainsDisplayName:
		return func(e *Event, env Env) bool {
			if !e.hasBody {
				return false
			}
			name := strings.ToLower(strings.TrimSpace(env.DisplayName()))
			return containsWord(e.lowerBody, name)
		}
	case CondRoomMemberCount:
		op, n, ok := parseIs(c.Is)
		if !ok {
			return never
		}
		return func(_ *Event, env Env) bool {
			count := int64(env.MemberCount())
			switch op {
			case "<":
				return count < n
			case ">":
				return count > n
			case "<=":
				return count <= n
			case ">=":
				return count >= n
			}
			return count == n
		}
	case CondSenderNotificationPermission:
		key := c.Key
		if key == "" {
			return never
		}
		return func(_ *Event, env Env) bool {
			return env.SenderPowerLevel() >= env.NotificationPowerLevel(key)
		}
	}
	return never // unrecognised conditions never match
}

// Outcome is what a user's rules decide for an event.
type Outcome struct {
	// RuleID and Kind name the rule that matched; RuleID is "" when none
	// did (or the user sent the event).
	RuleID string
	Kind   Kind
	// Actions are the matched rule's actions as stored.
	Actions []json.RawMessage
	// Notify is set by a notify action; Highlight by a highlight tweak
	// that is absent-valued or true.
	Notify, Highlight bool
}

// outcomeOf interprets actions. dont_notify and coalesce mean nothing, and
// the last highlight tweak wins.
func outcomeOf(id string, k Kind, actions []json.RawMessage) Outcome {
	o := Outcome{RuleID: id, Kind: k, Actions: actions}
	for _, a := range actions {
		v := gjson.ParseBytes(a)
		switch {
		case v.Type == gjson.String && v.Str == ActionNotify:
			o.Notify = true
		case v.IsObject() && v.Get("set_tweak").String() == "highlight":
			val := v.Get("value")
			o.Highlight = !val.Exists() || val.Type == gjson.True
		}
	}
	return o
}

type compiledRule struct {
	conds   []cond
	legacy  bool // a body mention rule: skipped for events with m.mentions
	outcome Outcome
}

// Compiled is a user's ruleset ready for evaluation: enabled rules only,
// in priority order, patterns compiled. It is immutable and safe for
// concurrent use.
type Compiled struct {
	userID string
	rules  []compiledRule
}

// Compile prepares a user's (merged) ruleset.
func Compile(rs Ruleset, userID string) *Compiled {
	c := &Compiled{userID: userID}
	for _, k := range Kinds {
		for _, r := range *rs.List(k) {
			if !r.Enabled {
				continue
			}
			cr := compiledRule{outcome: outcomeOf(r.RuleID, k, r.Actions), legacy: r.Default && legacyMentionRules[r.RuleID]}
			switch k {
			case Override, Underride:
				for _, cd := range r.Conditions {
					cr.conds = append(cr.conds, compileCondition(cd))
				}
			case Content:
				if r.Pattern == nil {
					continue
				}
				cr.conds = []cond{compileCondition(Condition{Kind: CondEventMatch, Key: "content.body", Pattern: r.Pattern})}
			case Room:
				id := r.RuleID
				p := compilePath("room_id")
				cr.conds = []cond{func(e *Event, _ Env) bool { return e.field(p).Str == id }}
			case Sender:
				id := r.RuleID
				cr.conds = []cond{func(e *Event, _ Env) bool { return e.sender == id }}
			}
			c.rules = append(c.rules, cr)
		}
	}
	return c
}

// Evaluate returns the outcome of the first rule that matches the event.
// Events the user sent never notify them.
func (c *Compiled) Evaluate(e *Event, env Env) Outcome {
	if e.sender == c.userID {
		return Outcome{}
	}
next:
	for _, r := range c.rules {
		if r.legacy && e.hasMentions {
			continue
		}
		for _, cd := range r.conds {
			if !cd(e, env) {
				continue next
			}
		}
		return r.outcome
	}
	return Outcome{}
}

// StaticEnv is an Env of fixed values, for tests and callers that know
// everything up front.
type StaticEnv struct {
	Members int
	// SenderLevel is the sender's power level; SenderIsCreator makes it
	// unbounded (privileged creators).
	SenderLevel     int64
	SenderIsCreator bool
	// NotificationLevels are the power levels' notifications object.
	NotificationLevels map[string]int64
	Name               string
}

func (s StaticEnv) MemberCount() int { return s.Members }

func (s StaticEnv) SenderPowerLevel() int64 {
	if s.SenderIsCreator {
		return math.MaxInt64
	}
	return s.SenderLevel
}

func (s StaticEnv) NotificationPowerLevel(key string) int64 {
	if l, ok := s.NotificationLevels[key]; ok {
		return l
	}
	return 50
}

func (s StaticEnv) DisplayName() string { return s.Name }
