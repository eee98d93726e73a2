package syncapi

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/pushrules"
)

// storedRules serves one stored m.push_rules per user.
type storedRules struct {
	Accounts
	rules map[string]json.RawMessage
}

func (s storedRules) AccountData(_ context.Context, localpart, _, _ string) (json.RawMessage, error) {
	if raw, ok := s.rules[localpart]; ok {
		return raw, nil
	}
	return nil, accounts.ErrNotFound
}

// TestUserRulesKnowDefaults checks which users count as having the
// default rules (whose member events are not evaluated): none stored, the
// defaults stored as the first sync stores them, but not a changed set.
func TestUserRulesKnowDefaults(t *testing.T) {
	stored, _ := pushrules.Encode(pushrules.Merge(nil, "@b:x"))
	changed := pushrules.Merge(nil, "@c:x")
	if err := changed.SetEnabled(pushrules.Override, ".m.rule.member_event", false); err != nil {
		t.Fatal(err)
	}
	changedRaw, _ := pushrules.Encode(changed)
	p := &pushEvaluator{accounts: storedRules{rules: map[string]json.RawMessage{"b": stored, "c": changedRaw}},
		cache: map[string]userRules{}, gens: map[string]uint64{}, log: logrus.WithField("test", t.Name())}
	for user, want := range map[string]bool{"@a:x": true, "@b:x": true, "@c:x": false} {
		r, err := p.userRules(context.Background(), user)
		if err != nil || r.defaults != want {
			t.Errorf("%s: defaults %v (%v), want %v", user, r.defaults, err, want)
		}
	}
}
