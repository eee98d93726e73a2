package pushrules

import (
	"encoding/json"
	"errors"
	"strconv"
	"testing"
)

// editOp is one change to a ruleset in a fixture.
type editOp struct {
	// Op is put, delete, enabled or actions.
	Op     string          `json:"op"`
	Kind   Kind            `json:"kind"`
	ID     string          `json:"id"`
	Body   json.RawMessage `json:"body"`   // put: the PUT body
	Before string          `json:"before"` // put
	After  string          `json:"after"`  // put
	// Enabled (enabled) and Actions (actions) are the new values.
	Enabled bool            `json:"enabled"`
	Actions json.RawMessage `json:"actions"`
	// Error is the expected error: missing, wrong_type, invalid,
	// reserved, not_found, default_rule, relative, too_many; "" for none.
	Error string `json:"error"`
}

func (op editOp) run(rs *Ruleset) error {
	switch op.Op {
	case "put":
		var body map[string]json.RawMessage
		if err := json.Unmarshal(op.Body, &body); err != nil {
			return err
		}
		if err := ValidateRuleID(op.ID); err != nil {
			return err
		}
		r, err := ParseRule(op.Kind, op.ID, body)
		if err != nil {
			return err
		}
		return rs.Put(op.Kind, r, op.Before, op.After)
	case "delete":
		return rs.Delete(op.Kind, op.ID)
	case "enabled":
		return rs.SetEnabled(op.Kind, op.ID, op.Enabled)
	case "actions":
		actions, err := ParseActions(op.Actions)
		if err != nil {
			return err
		}
		return rs.SetActions(op.Kind, op.ID, actions)
	}
	return errors.New("unknown op " + op.Op)
}

// apply runs the op and checks its error against the expected one.
func (op editOp) apply(rs *Ruleset) error {
	err := op.run(rs)
	if got := errorName(err); got != op.Error {
		return errors.New("error " + got + " (" + errString(err) + "), want " + op.Error)
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

func errorName(err error) string {
	var rel *RelativeError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrMissing):
		return "missing"
	case errors.Is(err, ErrWrongType):
		return "wrong_type"
	case errors.Is(err, ErrInvalid):
		return "invalid"
	case errors.Is(err, ErrReservedID):
		return "reserved"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrDefaultRule):
		return "default_rule"
	case errors.Is(err, ErrTooManyRules):
		return "too_many"
	case errors.As(err, &rel):
		return "relative"
	}
	return "other: " + err.Error()
}

// editCase starts from stored content (or the defaults), applies ops, and
// checks the order of rule IDs of some kinds and some rules' fields.
type editCase struct {
	Name   string              `json:"name"`
	Stored json.RawMessage     `json:"stored"`
	Ops    []editOp            `json:"ops"`
	Order  map[Kind][]string   `json:"order"`
	Rules  map[string]ruleWant `json:"rules"` // by "kind/rule_id"
}

type ruleWant struct {
	Enabled    *bool           `json:"enabled"`
	Default    *bool           `json:"default"`
	Actions    json.RawMessage `json:"actions"`
	Pattern    *string         `json:"pattern"`
	Conditions json.RawMessage `json:"conditions"`
	Absent     bool            `json:"absent"`
}

func TestEdits(t *testing.T) {
	var cases []editCase
	readCases(t, "edits.json", &cases)
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			rs, err := Load(tc.Stored, testUser)
			if err != nil {
				t.Fatal(err)
			}
			for i, op := range tc.Ops {
				if err := op.apply(&rs); err != nil {
					t.Fatalf("op %d (%s %s/%s): %v", i, op.Op, op.Kind, op.ID, err)
				}
			}
			// What was stored and loaded again is the same ruleset.
			data, err := Encode(rs)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Load(data, testUser)
			if err != nil {
				t.Fatal(err)
			}
			if d2, _ := Encode(again); string(d2) != string(data) {
				t.Fatalf("storing changed the rules:\n%s\n%s", data, d2)
			}
			for kind, want := range tc.Order {
				var got []string
				for _, r := range *rs.List(kind) {
					got = append(got, r.RuleID)
				}
				if !equalStrings(got, want) {
					t.Errorf("%s order %q, want %q", kind, got, want)
				}
			}
			for key, want := range tc.Rules {
				kind, id := splitKey(key)
				r := rs.Find(kind, id)
				if want.Absent {
					if r != nil {
						t.Errorf("%s still there", key)
					}
					continue
				}
				if r == nil {
					t.Errorf("%s missing", key)
					continue
				}
				if want.Enabled != nil && r.Enabled != *want.Enabled {
					t.Errorf("%s enabled %v", key, r.Enabled)
				}
				if want.Default != nil && r.Default != *want.Default {
					t.Errorf("%s default %v", key, r.Default)
				}
				if want.Actions != nil && !sameJSON(t, r.Actions, want.Actions) {
					t.Errorf("%s actions %s", key, mustJSON(r.Actions))
				}
				if want.Pattern != nil && (r.Pattern == nil || *r.Pattern != *want.Pattern) {
					t.Errorf("%s pattern %v", key, r.Pattern)
				}
				if want.Conditions != nil && !sameJSON(t, r.Conditions, want.Conditions) {
					t.Errorf("%s conditions %s", key, mustJSON(r.Conditions))
				}
			}
		})
	}
}

func splitKey(key string) (Kind, string) {
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			return Kind(key[:i]), key[i+1:]
		}
	}
	return "", key
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func sameJSON(t *testing.T, got any, want json.RawMessage) bool {
	t.Helper()
	var a, b any
	if err := json.Unmarshal([]byte(mustJSON(got)), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want, &b); err != nil {
		t.Fatal(err)
	}
	return mustJSON(a) == mustJSON(b)
}

func TestTooManyRules(t *testing.T) {
	rs := Defaults(testUser)
	for i := 0; i < MaxUserRules; i++ {
		id := "rule-" + strconv.Itoa(i)
		if err := rs.Put(Room, Rule{RuleID: id, Actions: nil}, "", ""); err != nil {
			t.Fatalf("rule %d: %v", i, err)
		}
	}
	if err := rs.Put(Room, Rule{RuleID: "one-more"}, "", ""); !errors.Is(err, ErrTooManyRules) {
		t.Fatalf("rule over the limit: %v", err)
	}
	// Updating an existing rule is still fine.
	if err := rs.Put(Room, Rule{RuleID: (*rs.List(Room))[0].RuleID}, "", ""); err != nil {
		t.Fatal(err)
	}
}
