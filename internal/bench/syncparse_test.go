package bench

import (
	"testing"
	"time"
)

func TestParseSync(t *testing.T) {
	raw := []byte(`{"next_batch":"s42","rooms":{"join":{
		"!a:x":{"timeline":{"events":[{"event_id":"$1","content":{"body":"hello"}},{"event_id":"$2","type":"m.room.name","content":{"name":"n"}}]}},
		"!b:x":{"timeline":{"events":[{"event_id":"$3","content":{"body":7}}]},"state":{"events":[{"event_id":"$s"}]}},
		"!c:x":{}},
		"invite":{"!d:x":{}}}}`)
	s, err := ParseSync(raw)
	if err != nil {
		t.Fatal(err)
	}
	if s.NextBatch != "s42" || s.JoinedRooms != 3 || s.TimelineEvents != 3 {
		t.Errorf("got next_batch %q, %d rooms, %d events; want s42, 3, 3", s.NextBatch, s.JoinedRooms, s.TimelineEvents)
	}
	if !s.HasEvent("$3") || s.HasEvent("$s") || !s.HasBody("hello") || s.HasBody("7") || len(s.Bodies) != 1 {
		t.Errorf("events %v, bodies %v: want timeline events only and string bodies only", s.EventIDs, s.Bodies)
	}
	if empty, err := ParseSync([]byte(`{"next_batch":"s1","rooms":{}}`)); err != nil || empty.JoinedRooms != 0 || empty.NextBatch != "s1" {
		t.Errorf("empty sync: %+v, %v", empty, err)
	}
	if _, err := ParseSync([]byte(`<html>`)); err == nil {
		t.Error("a body that is not JSON parsed")
	}
}

func TestRecorderPercentiles(t *testing.T) {
	var r Recorder
	if s := r.Stats(); s.Count != 0 || s.P50 != 0 {
		t.Errorf("no samples: %+v", s)
	}
	// 100 samples 1..100 ms, added out of order.
	for i := 100; i >= 1; i-- {
		r.Add(time.Duration(i) * time.Millisecond)
	}
	s := r.Stats()
	ms := time.Millisecond
	if s.Count != 100 || s.P50 != 51*ms || s.P90 != 91*ms || s.P99 != 100*ms || s.Max != 100*ms || s.Mean != 50500*time.Microsecond {
		t.Errorf("got %+v", s)
	}
	var one Recorder
	one.Add(3 * ms)
	if s := one.Stats(); s.P50 != 3*ms || s.P99 != 3*ms {
		t.Errorf("one sample: %+v", s)
	}
}
