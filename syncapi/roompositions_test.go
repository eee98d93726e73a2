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
		r.advance("!b:x", 9) // consumed after the snapshot below was taken
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
		r.advance("!a:x", 2) // never backwards
		r.advance("!none:x", 7)
		if a, none := latest("!a:x"), latest("!none:x"); a != 4 || none != 7 {
			t.Errorf("after advancing: a %d (want 4), none %d (want 7)", a, none)
		}
	})
}
