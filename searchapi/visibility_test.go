package searchapi_test

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestSearchVisibility(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		eve := s.Register("eve", "pw")
		joinedOnly := createRoom(t, s, alice, map[string]any{"preset": "public_chat", "initial_state": []map[string]any{
			{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}}}})
		early := say(t, s, alice, joinedOnly, "nebula early")
		join(t, s, bob, joinedOnly)
		later := say(t, s, alice, joinedOnly, "nebula later")
		private := createRoom(t, s, alice, map[string]any{"preset": "private_chat"})
		secret := say(t, s, alice, private, "pulsar secret")

		searchUntil(t, s, alice, "nebula", nil, "both nebula messages", resultCount(2))
		searchUntil(t, s, alice, "pulsar", nil, "the secret", hasResult(secret))
		// Bob joined after the first message of a joined-only room.
		r := searchUntil(t, s, bob, "nebula", nil, "the later message", hasResult(later))
		if ids := resultIDs(r); len(ids) != 1 || ids[0] == early {
			t.Fatalf("bob finds %v; %s is from before he joined", ids, early)
		}
		// A stranger finds nothing in a private room.
		if ids := resultIDs(search(t, s, eve, "pulsar", nil, "")); len(ids) != 0 {
			t.Fatalf("eve finds %v in a private room", ids)
		}
		// After leaving, bob still finds what he saw, and nothing newer.
		leave(t, s, bob, joinedOnly)
		departed := say(t, s, alice, joinedOnly, "nebula departed")
		searchUntil(t, s, alice, "nebula", nil, "the message after bob left", hasResult(departed))
		if ids := resultIDs(search(t, s, bob, "nebula", nil, "")); len(ids) != 1 || ids[0] != later {
			t.Fatalf("bob after leaving finds %v, want only %s", ids, later)
		}
		if n := search(t, s, bob, "departed", nil, "").Get("count").Int(); n != 0 {
			t.Fatalf("count tells bob of %d messages after he left", n)
		}
		// Once he forgets the room, he finds nothing there.
		s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(joinedOnly)+"/forget", bob.AccessToken, map[string]any{})
		if r := search(t, s, bob, "nebula", nil, ""); len(resultIDs(r)) != 0 || r.Get("count").Int() != 0 {
			t.Fatalf("bob finds messages of a room he forgot: %s", r.Raw)
		}
	})
}

func TestSearchRedactionsAndEdits(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		roomID := createRoom(t, s, alice, map[string]any{"preset": "private_chat"})
		doomed := say(t, s, alice, roomID, "walrus doomed")
		kept := say(t, s, alice, roomID, "walrus kept")
		searchUntil(t, s, alice, "walrus", nil, "both walruses", resultCount(2))
		s.MustOK("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/redact/%s/r1", url.PathEscape(roomID), url.PathEscape(doomed)),
			alice.AccessToken, map[string]any{"reason": "oops"})
		r := searchUntil(t, s, alice, "walrus", nil, "the redacted message to go", resultCount(1))
		if resultIDs(r)[0] != kept {
			t.Fatalf("after redaction: %v", resultIDs(r))
		}

		original := say(t, s, alice, roomID, "original wording")
		searchUntil(t, s, alice, "wording", nil, "the original", hasResult(original))
		edit := send(t, s, alice, roomID, map[string]any{"msgtype": "m.text", "body": "* revised phrasing",
			"m.new_content": map[string]any{"msgtype": "m.text", "body": "revised phrasing"},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": original}})
		r = searchUntil(t, s, alice, "phrasing", nil, "the edited message", resultCount(1))
		if resultIDs(r)[0] != original {
			t.Fatalf("the edit %s is a result of its own; want the original %s", edit, original)
		}
		if ids := resultIDs(search(t, s, alice, "wording", nil, "")); len(ids) != 0 {
			t.Fatalf("the original is still found by its old text: %v", ids)
		}
		// Another user's "edit" is not an edit.
		bob := s.Register("bob", "pw")
		s.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/invite", alice.AccessToken, map[string]any{"user_id": bob.UserID})
		join(t, s, bob, roomID)
		send(t, s, bob, roomID, map[string]any{"msgtype": "m.text", "body": "* hijacked",
			"m.new_content": map[string]any{"msgtype": "m.text", "body": "hijacked"},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": original}})
		marker := say(t, s, bob, roomID, "hijack marker")
		searchUntil(t, s, alice, "marker", nil, "the marker", hasResult(marker))
		if ids := resultIDs(search(t, s, alice, "phrasing", nil, "")); len(ids) != 1 || ids[0] != original {
			t.Fatalf("a foreign edit changed the original's text: %v", ids)
		}
		// A second edit wins; redacting it brings back the first edit's
		// text, and redacting that one the original's.
		edit2 := send(t, s, alice, roomID, map[string]any{"msgtype": "m.text", "body": "* third version",
			"m.new_content": map[string]any{"msgtype": "m.text", "body": "third version"},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": original}})
		searchUntil(t, s, alice, "third", nil, "the second edit's text", hasResult(original))
		redact := func(id string) {
			s.MustOK("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/redact/%s/r%s", url.PathEscape(roomID), url.PathEscape(id), id[1:8]),
				alice.AccessToken, map[string]any{})
		}
		redact(edit2)
		searchUntil(t, s, alice, "phrasing", nil, "the first edit's text back", hasResult(original))
		redact(edit)
		searchUntil(t, s, alice, "wording", nil, "the original's own text back", hasResult(original))
		for _, term := range []string{"third", "phrasing"} {
			if ids := resultIDs(search(t, s, alice, term, nil, "")); len(ids) != 0 {
				t.Fatalf("redacted edits' text %q still finds %v", term, ids)
			}
		}
	})
}

func TestSearchIndexSurvivesRestart(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		roomID := createRoom(t, s, alice, map[string]any{"preset": "private_chat"})
		before := say(t, s, alice, roomID, "glacier before")
		searchUntil(t, s, alice, "glacier", nil, "the first message", hasResult(before))
		s.Restart()
		if !hasResult(before)(search(t, s, alice, "glacier", nil, "")) {
			t.Fatal("the index was lost in the restart")
		}
		after := say(t, s, alice, roomID, "glacier after")
		r := searchUntil(t, s, alice, "glacier", nil, "the message after the restart", hasResult(after))
		if len(resultIDs(r)) != 2 {
			t.Fatalf("after restart: %v (duplicates or losses)", resultIDs(r))
		}
	})
}
