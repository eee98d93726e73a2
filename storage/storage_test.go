package storage_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

var testMigrations = []storage.Migration{
	{Version: 1, SQL: `CREATE TABLE widgets (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE)`},
	{Version: 2, SQL: `ALTER TABLE widgets ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';
		CREATE INDEX widgets_colour ON widgets (colour)`},
}

func TestMigrateIsIdempotentAndOrdered(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "widgets", testMigrations[:1]); err != nil {
			t.Fatal(err)
		}
		if err := db.Migrate(ctx, "widgets", testMigrations); err != nil {
			t.Fatal(err)
		}
		// Running again must not re-apply anything (ALTER would fail).
		if err := db.Migrate(ctx, "widgets", testMigrations); err != nil {
			t.Fatalf("second run: %v", err)
		}
		if _, err := db.Writer().ExecContext(ctx, "INSERT INTO widgets (id, name) VALUES ($1, $2)", 1, "a"); err != nil {
			t.Fatal(err)
		}
		var colour string
		if err := db.Reader().QueryRowContext(ctx, "SELECT colour FROM widgets WHERE id = $1", 1).Scan(&colour); err != nil {
			t.Fatal(err)
		}
		if colour != "red" {
			t.Fatalf("colour = %q, want red", colour)
		}
		bad := []storage.Migration{{Version: 2, SQL: "SELECT 1"}}
		if err := db.Migrate(ctx, "other", bad); err == nil {
			t.Fatal("a gap in versions was accepted")
		}
	})
}

func TestWithTxRollsBackAndReportsUniqueViolation(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, "widgets", testMigrations); err != nil {
			t.Fatal(err)
		}
		sentinel := errors.New("stop")
		err := db.WithTx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO widgets (id, name) VALUES ($1, $2)", 1, "a"); err != nil {
				return err
			}
			return sentinel
		})
		if !errors.Is(err, sentinel) {
			t.Fatalf("err = %v, want sentinel", err)
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, "SELECT COUNT(*) FROM widgets").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("rolled back insert is visible: %d rows", n)
		}
		if _, err := db.Writer().ExecContext(ctx, "INSERT INTO widgets (id, name) VALUES ($1, $2)", 1, "a"); err != nil {
			t.Fatal(err)
		}
		_, err = db.Writer().ExecContext(ctx, "INSERT INTO widgets (id, name) VALUES ($1, $2)", 2, "a")
		if !storage.IsUniqueViolation(err) {
			t.Fatalf("duplicate name: err = %v, want a unique violation", err)
		}
	})
}

func TestSQLiteReaderIsReadOnly(t *testing.T) {
	conns := storagetest.Connections(t)
	db, err := storage.Open(conns["sqlite"])
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Reader().ExecContext(context.Background(), "CREATE TABLE x (a INTEGER)"); err == nil {
		t.Fatal("the read pool accepted a write")
	}
}
