package searchapi

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"testing"

	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func TestSearchWords(t *testing.T) {
	cases := []struct {
		term string
		want []string
	}{
		{"Martians and Men", []string{"martians", "and", "men"}},
		{`"quoted" phrase`, []string{"quoted", "phrase"}},
		{`a"b`, []string{"a", "b"}},
		{"star*", []string{"star"}},
		{"NEAR(one two, 3)", []string{"near", "one", "two", "3"}},
		{"-excluded +required", []string{"excluded", "required"}},
		{"body:column ^start", []string{"body", "column", "start"}},
		{"café naïve", []string{"café", "naïve"}},
		{"日本語 テキスト", []string{"日本語", "テキスト"}},
		{"", nil},
		{` " * - ( ) `, nil},
		{strings.Repeat("w ", 40), slices.Repeat([]string{"w"}, maxSearchWords)},
	}
	for _, c := range cases {
		if got := searchWords(c.term); !slices.Equal(got, c.want) {
			t.Errorf("searchWords(%q) = %q, want %q", c.term, got, c.want)
		}
	}
}

// Every hostile term must be a valid query on both databases: the words
// go to FTS5 as quoted strings and to PostgreSQL through plainto_tsquery.
func TestMatchArgIsNeverSyntax(t *testing.T) {
	hostile := []string{`"`, `""`, `a"b"c`, `*`, `x*`, `NEAR(a b)`, `NEAR`, `-x`, `a OR b`, `a AND NOT b`, `NOT`,
		`col:x`, `^x`, `(x`, `x)`, `{a b}:c`, `a & b | !c <-> d`, `'x'`, `\`, `%_`, "\x00", "ä\u0301"}
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, component, migrations); err != nil {
			t.Fatal(err)
		}
		fts := dialectOf(db)
		err := db.WithTx(ctx, func(tx *sql.Tx) error {
			var id int64
			if err := tx.QueryRowContext(ctx, sqlInsertDoc, "$e", "!r", "@u:x", "m.room.message", keyBody, 1,
				"near or and not col x b c").Scan(&id); err != nil {
				return err
			}
			return fts.indexDoc(ctx, tx, id, "near or and not col x b c")
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, term := range hostile {
			words := searchWords(term)
			if len(words) == 0 {
				continue // the handler does not query
			}
			rows, err := db.Reader().QueryContext(ctx, fts.matchSQL(), fts.matchArg(words))
			if err != nil {
				t.Errorf("term %q: %v", term, err)
				continue
			}
			rows.Close()
		}
		// Words that are FTS5 keywords are matched as words.
		var n int
		if err := db.Reader().QueryRowContext(ctx, "SELECT COUNT(*) FROM ("+fts.matchSQL()+") AS m",
			fts.matchArg(searchWords("col x"))).Scan(&n); err != nil || n != 1 {
			t.Fatalf("matching plain words: %d, %v", n, err)
		}
	})
}
