package storage

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// TestStatementCache runs the cases the cache must get right on a real
// SQLite pool: a query run again while its own rows are still open (the
// inner use gets a statement of its own), a script of several statements,
// more distinct statements than the cache keeps, and a statement kept
// across transactions.
func TestStatementCache(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	// A script: several statements, never kept.
	if _, err := db.Writer().ExecContext(ctx, `CREATE TABLE t (n INTEGER); CREATE TABLE u (n INTEGER);`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := db.Writer().ExecContext(ctx, `INSERT INTO t (n) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
	}
	const q = `SELECT n FROM t WHERE n >= $1 ORDER BY n`
	tx, err := db.writer.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	outer, err := tx.QueryContext(ctx, q, 0)
	if err != nil {
		t.Fatal(err)
	}
	var pairs []string
	for outer.Next() {
		var n int
		if err := outer.Scan(&n); err != nil {
			t.Fatal(err)
		}
		// The same text again while the outer rows are open.
		var first int
		if err := tx.QueryRowContext(ctx, q, n).Scan(&first); err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, fmt.Sprintf("%d:%d", n, first))
	}
	if err := outer.Err(); err != nil {
		t.Fatal(err)
	}
	outer.Close()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pairs) != "[0:0 1:1 2:2 3:3 4:4]" {
		t.Fatalf("nested use of one statement: %v", pairs)
	}
	// More distinct statements than are kept, then the first again.
	for i := 0; i < maxCachedStmts+10; i++ {
		var n int
		if err := db.Writer().QueryRowContext(ctx, fmt.Sprintf(`SELECT %d + $1`, i), 1).Scan(&n); err != nil || n != i+1 {
			t.Fatalf("statement %d: %d, %v", i, n, err)
		}
	}
	var count int
	if err := db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM t WHERE n >= $1`, 2).Scan(&count); err != nil || count != 3 {
		t.Fatalf("count: %d, %v", count, err)
	}
}
