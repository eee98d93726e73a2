package api

import (
	"fmt"
	"testing"
)

// FuzzDirectoryToken checks that no /publicRooms since token crashes its
// parser and that what it accepts encodes back to a token that parses the
// same.
func FuzzDirectoryToken(f *testing.F) {
	f.Add(directoryToken{forward: true, joined: 3, roomID: "!a:b"}.String())
	f.Add("bjE6IWE6Yg")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		tok, ok := parseDirectoryToken(s)
		if !ok {
			return
		}
		again, ok := parseDirectoryToken(tok.String())
		if !ok || again != tok {
			t.Fatalf("%q parsed as %+v, which does not round-trip", s, tok)
		}
	})
}

// TestPagePublicRooms pages forwards and back through a directory, and
// refuses bad tokens and limits.
func TestPagePublicRooms(t *testing.T) {
	var rooms []PublicRoom
	for i := 0; i < 5; i++ {
		rooms = append(rooms, PublicRoom{RoomID: fmt.Sprintf("!r%d:x", i), NumJoinedMembers: 10 - i})
	}
	ids := func(p PublicRoomsPage) string {
		out := ""
		for _, r := range p.Chunk {
			out += r.RoomID[2:3]
		}
		return out
	}
	first, err := PagePublicRooms(rooms, "", 2)
	if err != nil || ids(first) != "01" || first.PrevBatch != "" || first.NextBatch == "" || first.Total != 5 {
		t.Fatalf("first page: %+v %v", first, err)
	}
	second, err := PagePublicRooms(rooms, first.NextBatch, 2)
	if err != nil || ids(second) != "23" || second.PrevBatch == "" {
		t.Fatalf("second page: %+v %v", second, err)
	}
	back, err := PagePublicRooms(rooms, second.PrevBatch, 2)
	if err != nil || ids(back) != "01" {
		t.Fatalf("back from the second page: %+v %v", back, err)
	}
	last, _ := PagePublicRooms(rooms, second.NextBatch, 2)
	if ids(last) != "4" || last.NextBatch != "" {
		t.Fatalf("last page: %+v", last)
	}
	if _, err := PagePublicRooms(rooms, "nope", 2); err != ErrBadDirectoryToken {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := PagePublicRooms(rooms, "", -1); err != ErrBadDirectoryLimit {
		t.Fatalf("negative limit: %v", err)
	}
	if empty, _ := PagePublicRooms(nil, "", 0); empty.Chunk == nil {
		t.Fatal("an empty directory must give an empty chunk, not null")
	}
}
