package pushrules

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The evaluator's cases live in testdata (see testdata/README.md): a new
// case is a new entry in a JSON file, with no new code.

// testEnv is a fixture's env, an Env of fixed values.
type testEnv struct {
	Members            int              `json:"members"`
	SenderLevel        int64            `json:"sender_level"`
	SenderIsCreator    bool             `json:"sender_is_creator"`
	NotificationLevels map[string]int64 `json:"notification_levels"`
	DisplayName        string           `json:"display_name"`
}

func (e testEnv) env() Env {
	return StaticEnv{Members: e.Members, SenderLevel: e.SenderLevel, SenderIsCreator: e.SenderIsCreator,
		NotificationLevels: e.NotificationLevels, Name: e.DisplayName}
}

func readCases(t *testing.T, file string, into any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// conditionCase is one condition with events it must and must not match.
type conditionCase struct {
	Name      string            `json:"name"`
	Condition Condition         `json:"condition"`
	Env       testEnv           `json:"env"`
	Match     []json.RawMessage `json:"match"`
	NoMatch   []json.RawMessage `json:"no_match"`
}

func TestConditions(t *testing.T) {
	var cases []conditionCase
	readCases(t, "conditions.json", &cases)
	kinds := map[string]bool{}
	for _, tc := range cases {
		kinds[tc.Condition.Kind] = true
		t.Run(tc.Name, func(t *testing.T) {
			c := compileCondition(tc.Condition)
			for _, ev := range tc.Match {
				if !c(NewEvent(ev), tc.Env.env()) {
					t.Errorf("does not match %s", ev)
				}
			}
			for _, ev := range tc.NoMatch {
				if c(NewEvent(ev), tc.Env.env()) {
					t.Errorf("matches %s", ev)
				}
			}
		})
	}
	for _, k := range []string{CondEventMatch, CondEventPropertyIs, CondEventPropertyContains, CondContainsDisplayName,
		CondRoomMemberCount, CondSenderNotificationPermission} {
		if !kinds[k] {
			t.Errorf("no case for condition kind %s", k)
		}
	}
}

// evaluationCase evaluates an event against a user's rules: the defaults,
// changed by ops (as in edits.json) when given.
type evaluationCase struct {
	Name      string          `json:"name"`
	User      string          `json:"user"`
	Ops       []editOp        `json:"ops"`
	Event     json.RawMessage `json:"event"`
	Env       testEnv         `json:"env"`
	Rule      string          `json:"rule"` // "" when no rule matches
	Notify    bool            `json:"notify"`
	Highlight bool            `json:"highlight"`
}

const testUser = "@alice:example.org"

func TestEvaluation(t *testing.T) {
	files, _ := filepath.Glob("testdata/evaluate_*.json")
	if len(files) == 0 {
		t.Fatal("no evaluation fixtures")
	}
	matched := map[string]bool{}
	for _, file := range files {
		var cases []evaluationCase
		readCases(t, filepath.Base(file), &cases)
		for _, tc := range cases {
			t.Run(strings.TrimSuffix(filepath.Base(file), ".json")+"/"+tc.Name, func(t *testing.T) {
				user := tc.User
				if user == "" {
					user = testUser
				}
				rs := Defaults(user)
				for i, op := range tc.Ops {
					if err := op.apply(&rs); err != nil {
						t.Fatalf("op %d: %v", i, err)
					}
				}
				got := Compile(rs, user).Evaluate(NewEvent(tc.Event), tc.Env.env())
				if got.RuleID != tc.Rule || got.Notify != tc.Notify || got.Highlight != tc.Highlight {
					t.Fatalf("got rule %q notify %v highlight %v; want %q %v %v",
						got.RuleID, got.Notify, got.Highlight, tc.Rule, tc.Notify, tc.Highlight)
				}
				if len(tc.Ops) == 0 {
					matched[got.RuleID] = true
				}
			})
		}
	}
	// Every default rule is shown to match some event on its own.
	defaults := Defaults(testUser)
	for _, k := range Kinds {
		for _, r := range *defaults.List(k) {
			if !matched[r.RuleID] && r.RuleID != masterRuleID {
				t.Errorf("no evaluation case matches the default rule %s", r.RuleID)
			}
		}
	}
}

func TestDefaultsForUser(t *testing.T) {
	rs := Defaults("@bob:example.com")
	if p := rs.Find(Content, ".m.rule.contains_user_name").Pattern; p == nil || *p != "bob" {
		t.Fatalf("contains_user_name pattern %v", p)
	}
	if c := rs.Find(Override, ".m.rule.invite_for_me").Conditions[2]; *c.Pattern != "@bob:example.com" {
		t.Fatalf("invite_for_me state_key %q", *c.Pattern)
	}
	if c := rs.Find(Override, ".m.rule.is_user_mention").Conditions[0]; string(c.Value) != `"@bob:example.com"` {
		t.Fatalf("is_user_mention value %s", c.Value)
	}
	// Another user's defaults do not share slices with these.
	other := Defaults("@carol:example.com")
	other.Find(Override, ".m.rule.master").Actions = append(other.Find(Override, ".m.rule.master").Actions, json.RawMessage(`"notify"`))
	if again := Defaults("@bob:example.com"); len(again.Find(Override, ".m.rule.master").Actions) != 0 {
		t.Fatal("defaults share actions")
	}
	var ids []string
	for _, k := range Kinds {
		for _, r := range *rs.List(k) {
			if !r.Default || !IsDefaultID(r.RuleID) {
				t.Errorf("%s is not marked default", r.RuleID)
			}
			ids = append(ids, r.RuleID)
		}
	}
	sort.Strings(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			t.Errorf("default rule %s twice", ids[i])
		}
	}
}

func TestRuleJSON(t *testing.T) {
	rs := Defaults(testUser)
	data, err := Encode(rs)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]map[string][]map[string]any
	if err := json.Unmarshal(data, &generic); err != nil {
		t.Fatal(err)
	}
	g := generic["global"]
	for _, k := range Kinds {
		if g[string(k)] == nil {
			t.Fatalf("kind %s missing: %s", k, data)
		}
	}
	master := g["override"][0]
	if master["rule_id"] != masterRuleID || master["conditions"] == nil || master["actions"] == nil {
		t.Fatalf("master rule: %v", master)
	}
	if _, ok := g["content"][0]["conditions"]; ok {
		t.Fatalf("a content rule has conditions: %v", g["content"][0])
	}
	tomb := rs.Find(Override, ".m.rule.tombstone")
	out, _ := json.Marshal(tomb)
	if !strings.Contains(string(out), `"pattern":""`) {
		t.Fatalf("an empty pattern is lost: %s", out)
	}
	// Round trip through storage.
	back, err := Load(data, testUser)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Encode(back)
	if string(again) != string(data) {
		t.Fatalf("round trip changed the rules:\n%s\n%s", data, again)
	}
	// Stored content that does not parse still gives the defaults.
	if rs, err := Load([]byte(`{"global": 5}`), testUser); err == nil || rs.Find(Override, masterRuleID) == nil {
		t.Fatal("garbage was not reported, or no defaults")
	}
}
