package syncapi

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
)

// testEvent builds a signed event for the edit rules.
func testEvent(t *testing.T, key ed25519.PrivateKey, room, sender, evType string, stateKey *string, ts int64, content map[string]any) gomatrixserverlib.PDU {
	t.Helper()
	raw, _ := json.Marshal(content)
	pdu, err := gomatrixserverlib.MustGetRoomVersion("10").NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: sender, RoomID: room, Type: evType, StateKey: stateKey,
		Content: raw, Depth: 3, PrevEvents: []string{}, AuthEvents: []string{},
	}).Build(time.UnixMilli(ts), "x.test", "ed25519:k", key)
	if err != nil {
		t.Fatal(err)
	}
	return pdu
}

func TestLatestEditRules(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	const room, alice, bob = "!r:x.test", "@alice:x.test", "@bob:x.test"
	msg := func(sender string, ts int64, content map[string]any) gomatrixserverlib.PDU {
		return testEvent(t, key, room, sender, "m.room.message", nil, ts, content)
	}
	original := msg(alice, 1000, map[string]any{"body": "hi", "msgtype": "m.text"})
	edit := func(sender, evType, room string, stateKey *string, ts int64, target string, withNew bool) gomatrixserverlib.PDU {
		c := map[string]any{"body": "* hey", "msgtype": "m.text", "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": target}}
		if withNew {
			c["m.new_content"] = map[string]any{"body": "hey", "msgtype": "m.text"}
		}
		return testEvent(t, key, room, sender, evType, stateKey, ts, c)
	}
	early := edit(alice, "m.room.message", room, nil, 2000, original.EventID(), true)
	late := edit(alice, "m.room.message", room, nil, 3000, original.EventID(), true)
	if got := latestEdit(original, []gomatrixserverlib.PDU{late, early}); got == nil || got.EventID() != late.EventID() {
		t.Fatalf("the latest edit by origin_server_ts was not chosen: %v", got)
	}

	// Ties on origin_server_ts go to the lexicographically largest event ID.
	tieA := edit(alice, "m.room.message", room, nil, 5000, original.EventID(), true)
	tieB := testEvent(t, key, room, alice, "m.room.message", nil, 5000, map[string]any{"body": "* other", "m.new_content": map[string]any{"body": "other"},
		"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": original.EventID()}})
	want := tieA
	if tieB.EventID() > tieA.EventID() {
		want = tieB
	}
	if got := latestEdit(original, []gomatrixserverlib.PDU{tieA, tieB, late}); got == nil || got.EventID() != want.EventID() {
		t.Fatalf("tie not broken by the largest event ID")
	}

	empty := ""
	invalid := map[string]gomatrixserverlib.PDU{
		"another sender":    edit(bob, "m.room.message", room, nil, 9000, original.EventID(), true),
		"another type":      edit(alice, "m.sticker", room, nil, 9000, original.EventID(), true),
		"another room":      edit(alice, "m.room.message", "!other:x.test", nil, 9000, original.EventID(), true),
		"a state event":     edit(alice, "m.room.message", room, &empty, 9000, original.EventID(), true),
		"no m.new_content":  edit(alice, "m.room.message", room, nil, 9000, original.EventID(), false),
		"another parent":    edit(alice, "m.room.message", room, nil, 9000, "$elsewhere", true),
		"not a replacement": msg(alice, 9000, map[string]any{"body": "x", "m.new_content": map[string]any{}, "m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": original.EventID()}}),
	}
	for name, ev := range invalid {
		if got := latestEdit(original, []gomatrixserverlib.PDU{early, ev}); got == nil || got.EventID() != early.EventID() {
			t.Errorf("%s: an invalid edit was chosen", name)
		}
	}

	// An encrypted edit keeps m.new_content in its ciphertext.
	encOriginal := testEvent(t, key, room, alice, "m.room.encrypted", nil, 1000, map[string]any{"ciphertext": "x"})
	encEdit := testEvent(t, key, room, alice, "m.room.encrypted", nil, 2000, map[string]any{"ciphertext": "y",
		"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": encOriginal.EventID()}})
	if got := latestEdit(encOriginal, []gomatrixserverlib.PDU{encEdit}); got == nil {
		t.Error("an encrypted edit was refused for lacking a cleartext m.new_content")
	}

	// An edit cannot be edited; a state event cannot be edited.
	editOfEdit := edit(alice, "m.room.message", room, nil, 9000, early.EventID(), true)
	if latestEdit(early, []gomatrixserverlib.PDU{editOfEdit}) != nil {
		t.Error("an edit of an edit was accepted")
	}
	state := testEvent(t, key, room, alice, "m.room.message", &empty, 1000, map[string]any{"body": "s"})
	if latestEdit(state, []gomatrixserverlib.PDU{edit(alice, "m.room.message", room, nil, 2000, state.EventID(), true)}) != nil {
		t.Error("an edit of a state event was accepted")
	}

	// A redacted original shows no edits; a redacted edit does not count.
	redactedJSON, err := gomatrixserverlib.MustGetRoomVersion("10").RedactEventJSON(original.JSON())
	if err != nil {
		t.Fatal(err)
	}
	redactedOriginal, err := gomatrixserverlib.MustGetRoomVersion("10").NewEventFromTrustedJSONWithEventID(original.EventID(), redactedJSON, true)
	if err != nil {
		t.Fatal(err)
	}
	if latestEdit(redactedOriginal, []gomatrixserverlib.PDU{late}) != nil {
		t.Error("a redacted original got an edit")
	}
	redactedEdit, err := redactedCopy(late)
	if err != nil {
		t.Fatal(err)
	}
	if got := latestEdit(original, []gomatrixserverlib.PDU{redactedEdit, early}); got == nil || got.EventID() != early.EventID() {
		t.Error("a redacted edit was chosen")
	}
	if latestEdit(original, nil) != nil {
		t.Error("an edit without candidates")
	}
}
