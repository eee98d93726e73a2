package pushrules

import (
	"encoding/json"
	"errors"
)

// Errors of the edits. The HTTP layer maps them: ErrNotFound to 404
// M_NOT_FOUND, ErrDefaultRule and *RelativeError to 400 M_UNKNOWN,
// ErrReservedID to 400 M_INVALID_PARAM, ErrTooManyRules to 400 M_UNKNOWN.
var (
	ErrNotFound     = errors.New("the push rule was not found")
	ErrDefaultRule  = errors.New("server-default rules cannot be deleted")
	ErrTooManyRules = errors.New("too many push rules")
)

// RelativeError is a before or after naming no user-defined rule of the
// kind (server-default rules cannot be placed against).
type RelativeError struct{ RuleID string }

func (e *RelativeError) Error() string { return "before/after rule not found: " + e.RuleID }

// MaxUserRules bounds the user-defined rules of a ruleset, all kinds
// together.
const MaxUserRules = 500

// Find returns a rule of a kind, nil when there is none.
func (rs *Ruleset) Find(k Kind, id string) *Rule {
	l := rs.List(k)
	if l == nil {
		return nil
	}
	for i := range *l {
		if (*l)[i].RuleID == id {
			return &(*l)[i]
		}
	}
	return nil
}

// split separates a kind's rules into the leading defaults (the master
// rule), the user's rules and the trailing defaults.
func split(k Kind, rules []Rule) (head, user, tail []Rule) {
	for _, r := range rules {
		switch {
		case !r.Default:
			user = append(user, r)
		case k == Override && r.RuleID == masterRuleID:
			head = append(head, r)
		default:
			tail = append(tail, r)
		}
	}
	return head, user, tail
}

func (rs *Ruleset) userRuleCount() int {
	n := 0
	for _, k := range Kinds {
		for _, r := range *rs.List(k) {
			if !r.Default {
				n++
			}
		}
	}
	return n
}

// Put adds a user-defined rule of a kind, or updates the one with its ID
// (which keeps its enabled flag). before places it as the next more
// important rule than the named one, else after as the next less
// important; with neither a new rule becomes the most important user rule
// of its kind and an updated one keeps its place.
func (rs *Ruleset) Put(k Kind, r Rule, before, after string) error {
	if err := ValidateRuleID(r.RuleID); err != nil {
		return err
	}
	l := rs.List(k)
	head, user, tail := split(k, *l)
	at := 0
	found := false
	for i, u := range user {
		if u.RuleID == r.RuleID {
			r.Enabled = u.Enabled
			user = append(user[:i:i], user[i+1:]...)
			at, found = i, true
			break
		}
	}
	if !found && rs.userRuleCount() >= MaxUserRules {
		return ErrTooManyRules
	}
	r.Default = false
	r.Conditions = normaliseConditions(k, r.Conditions)
	if k != Content {
		r.Pattern = nil
	}
	if r.Actions == nil {
		r.Actions = []json.RawMessage{}
	}
	if before != "" || after != "" {
		ref := before
		if ref == "" {
			ref = after
		}
		idx := -1
		for i, u := range user {
			if u.RuleID == ref {
				idx = i
				break
			}
		}
		if idx < 0 {
			return &RelativeError{RuleID: ref}
		}
		at = idx
		if before == "" {
			at = idx + 1
		}
	}
	user = append(user[:at:at], append([]Rule{r}, user[at:]...)...)
	*l = append(append(head, user...), tail...)
	return nil
}

// Delete removes a user-defined rule: ErrNotFound, or ErrDefaultRule for
// a server-default one.
func (rs *Ruleset) Delete(k Kind, id string) error {
	l := rs.List(k)
	if l == nil {
		return ErrNotFound
	}
	for i, r := range *l {
		if r.RuleID != id {
			continue
		}
		if r.Default {
			return ErrDefaultRule
		}
		*l = append((*l)[:i:i], (*l)[i+1:]...)
		return nil
	}
	return ErrNotFound
}

// SetEnabled enables or disables any rule; ErrNotFound.
func (rs *Ruleset) SetEnabled(k Kind, id string, enabled bool) error {
	r := rs.Find(k, id)
	if r == nil {
		return ErrNotFound
	}
	r.Enabled = enabled
	return nil
}

// SetActions replaces the actions of any rule, default ones included;
// ErrNotFound.
func (rs *Ruleset) SetActions(k Kind, id string, actions []json.RawMessage) error {
	r := rs.Find(k, id)
	if r == nil {
		return ErrNotFound
	}
	if actions == nil {
		actions = []json.RawMessage{}
	}
	r.Actions = actions
	return nil
}
