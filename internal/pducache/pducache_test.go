package pducache

import (
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/roomserver/testroom"
)

// TestPDUCacheFollowsStoredBytes checks that the cache of parsed events
// hands back the same PDU for the same stored row, and a new one when the
// row changed under the same event ID (a redaction), never the stale one.
func TestPDUCacheFollowsStoredBytes(t *testing.T) {
	alice := testroom.NewServer(t, "a.test").User("alice")
	r := testroom.New(t, "10", alice)
	msg := r.Send(alice, "secret").Last()
	c := New(100)
	parses := 0
	c.parse = func(version, eventID, eventJSON string, redacted bool) (gomatrixserverlib.PDU, error) {
		parses++
		return ParseStored(version, eventID, eventJSON, redacted)
	}
	parse := c.Parse

	first, err := parse(string(msg.Version()), msg.EventID(), string(msg.JSON()), false)
	if err != nil {
		t.Fatal(err)
	}
	again, err := parse(string(msg.Version()), msg.EventID(), string(msg.JSON()), false)
	if err != nil || again != first {
		t.Fatalf("second parse of the same row: %v, same PDU %v", err, again == first)
	}

	redactedJSON := `{"auth_events":[],"content":{},"depth":5,"hashes":{"sha256":"x"},"origin_server_ts":1,` +
		`"prev_events":[],"room_id":"` + r.ID() + `","sender":"` + alice.ID() + `","signatures":{},"type":"m.room.message"}`
	red, err := parse(string(msg.Version()), msg.EventID(), redactedJSON, true)
	if err != nil {
		t.Fatal(err)
	}
	if red == first || !red.Redacted() || len(red.Content()) > 2 {
		t.Fatalf("redacted row served %s (redacted %v)", red.Content(), red.Redacted())
	}
	if c.Len() != 2 || parses != 2 {
		t.Fatalf("%d entries and %d parses, want 2 of each", c.Len(), parses)
	}
}
