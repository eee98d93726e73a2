package api

import (
	"encoding/json"
	"testing"
)

// The spec's example of ordering space children.
func TestSortSpaceChildren(t *testing.T) {
	child := func(roomID string, ts int64, content string) SpaceChild {
		return SpaceChild{Type: "m.space.child", StateKey: roomID, OriginServerTS: ts, Content: json.RawMessage(content)}
	}
	children := []SpaceChild{
		child("!e:example.org", 1640641000000, `{"via":["example.org"]}`),
		child("!c:example.org", 1640841000000, `{"order":"first","via":["example.org"]}`),
		child("!d:example.org", 1640741000000, `{"via":["example.org"]}`),
		child("!a:example.org", 1640141000000, `{"order":"aaaa","via":["example.org"]}`),
		child("!b:example.org", 1640341000000, `{"order":" ","via":["example.org"]}`),
		// An invalid order (a character past ~) counts as none; the same
		// timestamp as !d falls back to the room ID.
		child("!f:example.org", 1640741000000, `{"order":"\u00e9","via":["example.org"]}`),
	}
	SortSpaceChildren(children)
	want := []string{"!b:example.org", "!a:example.org", "!c:example.org", "!e:example.org", "!d:example.org", "!f:example.org"}
	for i, c := range children {
		if c.StateKey != want[i] {
			t.Fatalf("position %d: got %s, want %s", i, c.StateKey, want[i])
		}
	}
}

func TestValidChild(t *testing.T) {
	for content, valid := range map[string]bool{
		`{"via":["example.org"]}`: true,
		`{"via":[]}`:              false,
		`{}`:                      false,
		`{"via":"example.org"}`:   false,
		`{"via":[""]}`:            false,
	} {
		c := SpaceChild{Type: "m.space.child", StateKey: "!a:example.org", Content: json.RawMessage(content)}
		if c.ValidChild() != valid {
			t.Errorf("%s: ValidChild %v, want %v", content, !valid, valid)
		}
	}
}
