package syncapi_test

import (
	"net/url"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestMessagesPaginationAndContext(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		eve := s.Register("eve", "pw")
		roomID := createRoom(t, s, alice.UserID)
		var ids []string
		for i := 0; i < 7; i++ {
			ids = append(ids, sendEvent(t, s, roomID, alice.UserID, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": i}))
		}
		r := syncUntil(t, s, alice, "", "&filter="+url.QueryEscape(`{"room":{"timeline":{"limit":3}}}`), func(r gjson.Result) bool {
			return r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.events.#(event_id==" + ids[6] + ")").Exists()
		})
		prev := r.Get("rooms.join." + gjson.Escape(roomID) + ".timeline.prev_batch").String()
		base := "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)

		// Backwards from the sync's prev_batch: the messages before the timeline, newest first.
		m := s.MustOK("GET", base+"/messages?dir=b&limit=2&from="+url.QueryEscape(prev), alice.AccessToken, nil)
		if m.Get("chunk.#").Int() != 2 || m.Get("chunk.0.event_id").String() != ids[3] || m.Get("chunk.1.event_id").String() != ids[2] {
			t.Fatalf("backwards page: %s", m)
		}
		end := m.Get("end").String()
		m2 := s.MustOK("GET", base+"/messages?dir=b&limit=2&from="+url.QueryEscape(end), alice.AccessToken, nil)
		if m2.Get("chunk.0.event_id").String() != ids[1] {
			t.Fatalf("second page: %s", m2)
		}
		// Paging all the way back: the page that reaches the start still
		// has an end, from which the next page is empty and has none.
		all := s.MustOK("GET", base+"/messages?dir=b&limit=100", alice.AccessToken, nil)
		if !all.Get("end").Exists() || all.Get("chunk.#(type==m.room.create)").Exists() == false {
			t.Fatalf("full history: %s", all)
		}
		past := s.MustOK("GET", base+"/messages?dir=b&limit=100&from="+url.QueryEscape(all.Get("end").String()), alice.AccessToken, nil)
		if past.Get("end").Exists() || len(past.Get("chunk").Array()) != 0 {
			t.Fatalf("past the start: %s", past)
		}
		// Forwards from the start.
		f := s.MustOK("GET", base+"/messages?dir=f&limit=1", alice.AccessToken, nil)
		if f.Get("chunk.0.type").String() != "m.room.create" || !f.Get("end").Exists() {
			t.Fatalf("forwards: %s", f)
		}
		// Type filters apply.
		only := s.MustOK("GET", base+"/messages?dir=b&limit=100&filter="+url.QueryEscape(`{"types":["m.room.message"]}`), alice.AccessToken, nil)
		if only.Get("chunk.#").Int() != 7 {
			t.Fatalf("filtered: %d events", only.Get("chunk.#").Int())
		}

		// Context around the fourth message.
		c := s.MustOK("GET", base+"/context/"+url.PathEscape(ids[3])+"?limit=4", alice.AccessToken, nil)
		if c.Get("event.event_id").String() != ids[3] || c.Get("events_before.0.event_id").String() != ids[2] ||
			c.Get("events_after.0.event_id").String() != ids[4] || !c.Get("state.#(type==m.room.create)").Exists() {
			t.Fatalf("context: %s", c)
		}
		for _, ev := range c.Get("state").Array() {
			if ev.Get("room_id").String() != roomID {
				t.Fatalf("context state event without the room ID: %s", ev)
			}
		}

		// Errors and strangers.
		s.ExpectError(400, "M_MISSING_PARAM", "GET", base+"/messages", alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", base+"/messages?dir=x", alice.AccessToken, nil)
		s.ExpectError(400, "M_INVALID_PARAM", "GET", base+"/messages?dir=b&from=nope", alice.AccessToken, nil)
		s.ExpectError(400, "M_BAD_JSON", "GET", base+"/messages?dir=b&filter="+url.QueryEscape(`{"limit":"x"}`), alice.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "GET", base+"/messages?dir=b", eve.AccessToken, nil)
		s.ExpectError(403, "M_FORBIDDEN", "GET", base+"/context/"+url.PathEscape(ids[3]), eve.AccessToken, nil)
		s.ExpectError(404, "M_NOT_FOUND", "GET", base+"/context/$nope", alice.AccessToken, nil)
	})
}
