// Package clientevent turns room events (PDUs) into the format the
// client-server API serves them in.
package clientevent

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// Event is an event as clients see it (the spec's ClientEvent).
type Event struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Unsigned       json.RawMessage `json:"unsigned,omitempty"`
	// Redacts is kept at the top level for clients of rooms before v11.
	Redacts string `json:"redacts,omitempty"`
	// Raw, when set, is served instead of the fields above: the event in
	// federation format, or only the fields a filter asked for.
	Raw json.RawMessage `json:"-"`
}

// MarshalJSON serves Raw when set.
func (e Event) MarshalJSON() ([]byte, error) {
	if e.Raw != nil {
		return e.Raw, nil
	}
	type plain Event // without this method
	return json.Marshal(plain(e))
}

// Project keeps only the given dot-separated fields of the event (a
// filter's event_fields); a field containing a literal dot escapes it
// with a backslash, as the spec says.
func Project(e Event, fields []string) Event {
	full, err := json.Marshal(e)
	if err != nil || len(fields) == 0 {
		return e
	}
	out := []byte("{}")
	for _, f := range fields {
		path := gjsonPath(f)
		if v := gjson.GetBytes(full, path); v.Exists() {
			out, _ = sjson.SetRawBytes(out, path, []byte(v.Raw))
		}
	}
	e.Raw = out
	return e
}

// gjsonPath turns a spec field path (dots separate, "\." is a literal
// dot) into a gjson path, escaping gjson's other special characters.
func gjsonPath(f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		c := f[i]
		switch {
		case c == '\\' && i+1 < len(f) && f[i+1] == '.':
			b.WriteString(`\.`)
			i++
		case c == '.':
			b.WriteByte('.')
		case strings.IndexByte("*?|#@!=<>%", c) >= 0:
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Options change what Format adds.
type Options struct {
	// OmitRoomID leaves room_id out, as /sync does inside a room.
	OmitRoomID bool
	// TxnID is shown to the device that sent the event.
	TxnID string
	// Now is the time age is counted to (time.Now when zero).
	Now time.Time
}

// Format converts a PDU. unsigned.age is computed at the time of serving;
// unsigned data the server stored with the event (redacted_because) is
// kept, and everything servers exchange but clients do not need (hashes,
// signatures, auth and prev events, depth) is left out.
func Format(pdu gomatrixserverlib.PDU, opts Options) Event {
	ev := Event{
		Content:        json.RawMessage(pdu.Content()),
		EventID:        pdu.EventID(),
		OriginServerTS: int64(pdu.OriginServerTS()),
		Sender:         string(pdu.SenderID()),
		StateKey:       pdu.StateKey(),
		Type:           pdu.Type(),
		Redacts:        pdu.Redacts(),
	}
	if len(ev.Content) == 0 {
		ev.Content = json.RawMessage("{}")
	}
	if !opts.OmitRoomID {
		ev.RoomID = pdu.RoomID().String()
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	unsigned := []byte(pdu.Unsigned())
	if len(unsigned) == 0 || !gjson.ValidBytes(unsigned) || !gjson.ParseBytes(unsigned).IsObject() {
		unsigned = []byte("{}")
	}
	unsigned, _ = sjson.SetBytes(unsigned, "age", max(now.UnixMilli()-ev.OriginServerTS, 0))
	if opts.TxnID != "" {
		unsigned, _ = sjson.SetBytes(unsigned, "transaction_id", opts.TxnID)
	}
	ev.Unsigned = unsigned
	return ev
}

// FormatAll converts several PDUs.
func FormatAll(pdus []gomatrixserverlib.PDU, opts Options) []Event {
	out := make([]Event, len(pdus))
	for i, p := range pdus {
		out[i] = Format(p, opts)
	}
	return out
}
