package clientevent

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
)

func TestFormat(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	sk := ""
	ts := time.UnixMilli(1_000_000)
	pdu, err := gomatrixserverlib.MustGetRoomVersion("10").NewEventBuilderFromProtoEvent(&gomatrixserverlib.ProtoEvent{
		SenderID: "@a:x.test", RoomID: "!r:x.test", Type: "m.room.topic", StateKey: &sk,
		Content: []byte(`{"topic":"t"}`), Depth: 3, PrevEvents: []string{}, AuthEvents: []string{},
	}).Build(ts, "x.test", "ed25519:k", key)
	if err != nil {
		t.Fatal(err)
	}
	ev := Format(pdu, Options{TxnID: "txn1", Now: ts.Add(5 * time.Second)})
	raw, _ := json.Marshal(ev)
	got := gjson.ParseBytes(raw)
	for path, want := range map[string]any{
		"content.topic": "t", "event_id": pdu.EventID(), "room_id": "!r:x.test", "sender": "@a:x.test",
		"state_key": "", "type": "m.room.topic", "origin_server_ts": float64(1_000_000),
		"unsigned.age": float64(5000), "unsigned.transaction_id": "txn1",
	} {
		if v := got.Get(path).Value(); v != want {
			t.Errorf("%s = %v, want %v", path, v, want)
		}
	}
	for _, absent := range []string{"hashes", "signatures", "auth_events", "prev_events", "depth", "redacts"} {
		if got.Get(absent).Exists() {
			t.Errorf("%s should not be served to clients: %s", absent, raw)
		}
	}
	if Format(pdu, Options{OmitRoomID: true}).RoomID != "" {
		t.Error("OmitRoomID kept the room ID")
	}
}

func TestProjectAndRaw(t *testing.T) {
	ev := Event{Content: json.RawMessage(`{"body":"hi","m.relates_to":{"rel_type":"x"},"a.b":1}`), EventID: "$e", Sender: "@a:x", Type: "m.room.message"}
	got, _ := json.Marshal(Project(ev, []string{"type", "content.body", `content.a\.b`, "content.missing"}))
	if string(got) != `{"type":"m.room.message","content":{"body":"hi","a.b":1}}` {
		t.Fatalf("projection: %s", got)
	}
	ev.Raw = json.RawMessage(`{"raw":true}`)
	if got, _ := json.Marshal(ev); string(got) != `{"raw":true}` {
		t.Fatalf("raw: %s", got)
	}
}
