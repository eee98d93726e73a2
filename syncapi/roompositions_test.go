package syncapi

import (
	"context"
	"database/sql"
	"testing"

	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func TestRoomPositionsLoadOnceAndNeverGoBack(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, component, migrations); err != nil {
			t.Fatal(err)
		}
		for i, room := range []string{"!a:x", "!a:x", "!b:x"} {
			if _, err := db.Writer().ExecContext(ctx, sqlInsertEvent, "$e"+string(rune('0'+i)), 3+i, room, "m.room.message", "@u:x",
				nil, nil, "10", `{}`, "", "", "[]", "[]"); err != nil {
				t.Fatal(err)
			}
		}
		r := newRoomPositions()
		r.advance("!b:x", 9, false) // consumed after the snapshot below was taken
		latest := func(room string) int64 {
			t.Helper()
			var pos int64
			if err := db.ReadTx(ctx, func(tx *sql.Tx) (err error) {
				pos, err = r.latest(ctx, tx, room)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return pos
		}
		if got := latest("!a:x"); got != 4 {
			t.Errorf("room a read from the events: %d, want 4", got)
		}
		if got := latest("!b:x"); got != 9 {
			t.Errorf("room b: %d, want the advanced 9", got)
		}
		if got := latest("!none:x"); got != 0 {
			t.Errorf("a room without events: %d", got)
		}
		r.advance("!a:x", 2, false) // never backwards
		r.advance("!none:x", 7, false)
		if a, none := latest("!a:x"), latest("!none:x"); a != 4 || none != 7 {
			t.Errorf("after advancing: a %d (want 4), none %d (want 7)", a, none)
		}
	})
}

func TestRoomPositionsLatestStateChange(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, component, migrations); err != nil {
			t.Fatal(err)
		}
		join := "join"
		for i, e := range []struct {
			room, evType string
			stateKey     *string
			adds         string
		}{
			{"!a:x", "m.room.member", &join, `["$e0"]`}, {"!a:x", "m.room.message", nil, "[]"}, {"!b:x", "m.room.message", nil, "[]"},
		} {
			if _, err := db.Writer().ExecContext(ctx, sqlInsertEvent, "$e"+string(rune('0'+i)), 3+i, e.room, e.evType, "@u:x",
				e.stateKey, nil, "10", `{}`, "", "", e.adds, "[]"); err != nil {
				t.Fatal(err)
			}
		}
		r := newRoomPositions()
		state := func(room string) int64 {
			t.Helper()
			var pos int64
			if err := db.ReadTx(ctx, func(tx *sql.Tx) (err error) {
				pos, err = r.latestState(ctx, tx, room)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return pos
		}
		if got := state("!a:x"); got != 3 {
			t.Errorf("room a's state change, read from the events: %d, want 3 (not the later message)", got)
		}
		if got := state("!b:x"); got != 0 {
			t.Errorf("room b's state never changed: %d", got)
		}
		r.advance("!b:x", 8, false)
		if got := state("!b:x"); got != 0 {
			t.Errorf("a message moved room b's state position to %d", got)
		}
		r.advance("!b:x", 9, true)
		r.advance("!a:x", 1, true) // never backwards
		if a, b := state("!a:x"), state("!b:x"); a != 3 || b != 9 {
			t.Errorf("after advancing: a %d (want 3), b %d (want 9)", a, b)
		}
	})
}
