package searchapi

// The only SQL that differs between SQLite and PostgreSQL: how documents
// are indexed for full text search and how a query matches and ranks
// them. Everything else (filters by room, key and position, ordering,
// paging) is shared and appended to matchSQL by search.go.

import (
	"context"
	"database/sql"
	"strings"

	"github.com/plexus-chat/plexus/storage"
)

const sqliteDocsSQL = `
CREATE TABLE searchapi_docs (
	id INTEGER PRIMARY KEY,
	event_id TEXT NOT NULL UNIQUE,
	room_id TEXT NOT NULL,
	sender TEXT NOT NULL,
	type TEXT NOT NULL,
	search_key TEXT NOT NULL,
	pos BIGINT NOT NULL,
	text TEXT NOT NULL,
	own_text TEXT NOT NULL
);
CREATE INDEX searchapi_docs_room_pos ON searchapi_docs (room_id, pos);
-- An external content FTS5 index over searchapi_docs.text: the text is
-- stored once, and the indexer keeps the index in step (insert, and the
-- 'delete' command with the old text).
CREATE VIRTUAL TABLE searchapi_fts USING fts5 (
	text, content = 'searchapi_docs', content_rowid = 'id',
	tokenize = 'porter unicode61 remove_diacritics 2'
);`

const postgresDocsSQL = `
CREATE TABLE searchapi_docs (
	id BIGSERIAL PRIMARY KEY,
	event_id TEXT NOT NULL UNIQUE,
	room_id TEXT NOT NULL,
	sender TEXT NOT NULL,
	type TEXT NOT NULL,
	search_key TEXT NOT NULL,
	pos BIGINT NOT NULL,
	text TEXT NOT NULL,
	own_text TEXT NOT NULL,
	tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
);
CREATE INDEX searchapi_docs_room_pos ON searchapi_docs (room_id, pos);
CREATE INDEX searchapi_docs_tsv ON searchapi_docs USING GIN (tsv);`

// dialect is the full text search of one database.
type dialect interface {
	// indexDoc adds a new document's text to the index.
	indexDoc(ctx context.Context, tx *sql.Tx, id int64, text string) error
	// unindexDoc removes a document's text (as it was indexed) from the
	// index, before the row changes or goes.
	unindexDoc(ctx context.Context, tx *sql.Tx, id int64, oldText string) error
	// matchSQL selects d.id, d.event_id, d.room_id, d.sender, d.type,
	// d.pos and a score (higher is better) of the documents matching $1,
	// the query that matchArg makes, ending in a WHERE clause that the
	// caller extends with AND.
	matchSQL() string
	// matchArg turns the words of a search term into $1.
	matchArg(words []string) string
}

func dialectOf(db *storage.DB) dialect {
	if db.Dialect == storage.Postgres {
		return postgresFTS{}
	}
	return sqliteFTS{}
}

type sqliteFTS struct{}

func (sqliteFTS) indexDoc(ctx context.Context, tx *sql.Tx, id int64, text string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO searchapi_fts (rowid, text) VALUES ($1, $2)`, id, text)
	return err
}

func (sqliteFTS) unindexDoc(ctx context.Context, tx *sql.Tx, id int64, oldText string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO searchapi_fts (searchapi_fts, rowid, text) VALUES ('delete', $1, $2)`, id, oldText)
	return err
}

// bm25 is lower for better matches, hence negated.
func (sqliteFTS) matchSQL() string {
	return `SELECT d.id, d.event_id, d.room_id, d.sender, d.type, d.pos, -bm25(searchapi_fts) AS score
		FROM searchapi_fts JOIN searchapi_docs d ON d.id = searchapi_fts.rowid
		WHERE searchapi_fts MATCH $1`
}

// Each word becomes a quoted FTS5 string, so nothing in it is syntax
// (NEAR, AND, *, ^, -, column filters); words never contain quotes
// (words.go), and the strings are implicitly ANDed.
func (sqliteFTS) matchArg(words []string) string {
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = `"` + strings.ReplaceAll(w, `"`, `""`) + `"`
	}
	return strings.Join(quoted, " ")
}

type postgresFTS struct{}

// The tsvector column is generated, so there is nothing to do.
func (postgresFTS) indexDoc(context.Context, *sql.Tx, int64, string) error   { return nil }
func (postgresFTS) unindexDoc(context.Context, *sql.Tx, int64, string) error { return nil }

func (postgresFTS) matchSQL() string {
	return `SELECT d.id, d.event_id, d.room_id, d.sender, d.type, d.pos, ts_rank(d.tsv, q.query) AS score
		FROM searchapi_docs d, plainto_tsquery('english', $1) AS q(query)
		WHERE d.tsv @@ q.query`
}

// plainto_tsquery ignores all operator syntax and ANDs the words.
func (postgresFTS) matchArg(words []string) string { return strings.Join(words, " ") }
