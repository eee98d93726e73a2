package pushrules

import (
	"strconv"
	"testing"
)

// BenchmarkEvaluate is the cost of one event for one user with the
// default rules: what the sync API pays per local member per event.
func BenchmarkEvaluate(b *testing.B) {
	c := Compile(Defaults("@alice:example.org"), "@alice:example.org")
	env := StaticEnv{Members: 12, SenderLevel: 0, Name: "Alice"}
	for _, bc := range []struct{ name, event string }{
		{"message", `{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:example.org","content":{"msgtype":"m.text","body":"the quick brown fox jumps over the lazy dog","m.mentions":{}}}`},
		{"legacy_body", `{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:example.org","content":{"msgtype":"m.text","body":"the quick brown fox jumps over the lazy dog"}}`},
		{"mention", `{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:example.org","content":{"msgtype":"m.text","body":"hi","m.mentions":{"user_ids":["@alice:example.org"]}}}`},
		{"encrypted", `{"type":"m.room.encrypted","sender":"@bob:example.org","room_id":"!r:example.org","content":{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"AwgAEnAC"}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			data := []byte(bc.event)
			b.ReportAllocs()
			for b.Loop() {
				c.Evaluate(NewEvent(data), env)
			}
		})
	}
}

// BenchmarkEvaluateMembers is one event evaluated for many users, sharing
// the parsed event as the sync API does.
func BenchmarkEvaluateMembers(b *testing.B) {
	const members = 50
	compiled := make([]*Compiled, members)
	for i := range compiled {
		u := "@user" + strconv.Itoa(i) + ":example.org"
		compiled[i] = Compile(Defaults(u), u)
	}
	env := StaticEnv{Members: 200, Name: "Someone"}
	data := []byte(`{"type":"m.room.message","sender":"@bob:example.org","room_id":"!r:example.org","content":{"msgtype":"m.text","body":"hello everyone","m.mentions":{}}}`)
	b.ReportAllocs()
	for b.Loop() {
		ev := NewEvent(data)
		for _, c := range compiled {
			c.Evaluate(ev, env)
		}
	}
}

// BenchmarkCompile is the cost of a rule cache miss.
func BenchmarkCompile(b *testing.B) {
	rs := Defaults("@alice:example.org")
	b.ReportAllocs()
	for b.Loop() {
		Compile(rs, "@alice:example.org")
	}
}
