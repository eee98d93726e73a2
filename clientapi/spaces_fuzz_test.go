package clientapi

import (
	"encoding/json"
	"testing"
)

// Other servers' /hierarchy answers are untrusted: reading them must never
// panic, and must only return the room asked about, with valid children.
func FuzzParseRemoteHierarchy(f *testing.F) {
	f.Add([]byte(`{"room":{"room_id":"!a:x","num_joined_members":1,"children_state":[{"type":"m.space.child","state_key":"!b:x","content":{"via":["x"]},"sender":"@u:x","origin_server_ts":1}]},"children":[{"room_id":"!b:x"}],"inaccessible_children":["!c:x"]}`))
	f.Add([]byte(`{"room":{"room_id":"!a:x","children_state":[{"state_key":"!b:x","content":{"via":"x"}}]},"children":[null,{}]}`))
	f.Add([]byte(`{"room":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		remote := newRemoteRooms()
		room := parseRemoteHierarchy(json.RawMessage(data), "!a:x", remote)
		if room == nil {
			return
		}
		if room.RoomID != "!a:x" {
			t.Fatalf("room %q returned for !a:x", room.RoomID)
		}
		for _, c := range room.ChildrenState {
			if !c.ValidChild() {
				t.Fatalf("invalid child kept: %+v", c)
			}
		}
		if remote.known["!a:x"] != nil {
			t.Fatal("the room itself recorded as its own child")
		}
	})
}
