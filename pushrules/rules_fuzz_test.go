package pushrules

import (
	"encoding/json"
	"testing"
)

// FuzzParseRule feeds PUT bodies through parsing, storing, loading,
// compiling and evaluating: nothing a client sends may panic, and what is
// accepted must survive being stored.
func FuzzParseRule(f *testing.F) {
	f.Add("override", `{"actions":["notify"],"conditions":[{"kind":"event_match","key":"content.body","pattern":"a*b?c"}]}`, `{"content":{"body":"axbyc"}}`)
	f.Add("content", `{"actions":[{"set_tweak":"highlight"}],"pattern":"*"}`, `{"content":{"body":""}}`)
	f.Add("underride", `{"actions":[],"conditions":[{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":null}]}`, `{"content":{"m.mentions":{"user_ids":[null]}}}`)
	f.Add("override", `{"actions":["notify"],"conditions":[{"kind":"room_member_count","is":">=99999999999999999"}]}`, `{}`)
	f.Fuzz(func(t *testing.T, kindName, body, event string) {
		kind, ok := ParseKind(kindName)
		if !ok {
			return
		}
		var fields map[string]json.RawMessage
		if json.Unmarshal([]byte(body), &fields) != nil {
			return
		}
		r, err := ParseRule(kind, "fuzz", fields)
		if err != nil {
			return
		}
		rs := Defaults("@alice:example.org")
		if err := rs.Put(kind, r, "", ""); err != nil {
			t.Fatal(err)
		}
		data, err := Encode(rs)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Load(data, "@alice:example.org")
		if err != nil {
			t.Fatalf("stored rules do not load: %v\n%s", err, data)
		}
		if back.Find(kind, "fuzz") == nil {
			t.Fatalf("the rule was lost: %s", data)
		}
		env := StaticEnv{Members: 3, SenderLevel: 50, Name: "Alice"}
		Compile(back, "@alice:example.org").Evaluate(NewEvent([]byte(event)), env)
	})
}
