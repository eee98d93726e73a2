package eventfilter

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics and that what it accepts
// survives a trip through JSON unchanged.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"event_fields": ["type"], "event_format": "client"}`,
		`{"presence": {"limit": 5, "types": ["m.*"], "not_senders": ["@a:b"]}}`,
		`{"room": {"rooms": ["!a:b"], "include_leave": true, "timeline": {"limit": 1e1, "contains_url": false, "types": []}}}`,
		`{"room": {"state": {"lazy_load_members": true, "rooms": null}}}`,
		`{"account_data": {"limit": -1}}`,
		`[1]`,
		`{"room": {"ephemeral": {"senders": [null]}}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		filter, err := Parse(data)
		if err != nil {
			if filter != nil {
				t.Fatalf("filter returned with error %v", err)
			}
			return
		}
		out, err := json.Marshal(filter)
		if err != nil {
			t.Fatalf("marshal accepted filter: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("re-marshalled filter %s rejected: %v", out, err)
		}
		if !reflect.DeepEqual(again, filter) {
			t.Fatalf("round trip changed the filter:\n%+v\n%+v", filter, again)
		}
	})
}
