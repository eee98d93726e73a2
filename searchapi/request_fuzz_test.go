package searchapi

import (
	"strings"
	"testing"
	"unicode"
)

// FuzzParseRequest: any body and token is either a request within the
// limits or a Matrix error, never a panic.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"search_categories":{"room_events":{"search_term":"a b","keys":["content.body"],"order_by":"recent",
		"event_context":{"before_limit":3,"after_limit":900,"include_profile":true},"include_state":true,
		"groupings":{"group_by":[{"key":"room_id"}]},"filter":{"limit":1000,"rooms":["!a:b"]}}}}`), "")
	f.Add([]byte(`{"search_categories":{}}`), batchToken('o', 20))
	f.Add([]byte(`{"search_categories":{"room_events":{"search_term":"\"*"}}}`), batchToken('p', 7))
	f.Fuzz(func(t *testing.T, body []byte, token string) {
		req, err := parseRequest(body, token)
		if err != nil || req == nil {
			return
		}
		if req.limit < 1 || req.limit > maxResultLimit || req.offset < 0 || req.offset > maxOffset || req.beforePos < 0 {
			t.Fatalf("out of bounds: %+v", req)
		}
		if req.context != nil && (req.context.before > maxContextLimit || req.context.after > maxContextLimit ||
			req.context.before < 0 || req.context.after < 0) {
			t.Fatalf("context out of bounds: %+v", req.context)
		}
		if len(req.words) > maxSearchWords {
			t.Fatalf("%d words", len(req.words))
		}
		for _, w := range req.words {
			if w == "" || strings.ContainsFunc(w, func(r rune) bool {
				return !unicode.IsLetter(r) && !unicode.IsNumber(r) && !unicode.IsMark(r)
			}) {
				t.Fatalf("word %q carries syntax", w)
			}
		}
	})
}
