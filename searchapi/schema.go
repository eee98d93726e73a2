package searchapi

import "github.com/plexus-chat/plexus/storage"

const component = "searchapi"

// Tables:
//   - searchapi_position: how far the indexer has read the roomserver's
//     output stream.
//   - searchapi_docs: one row per searchable event: its own text (body,
//     name or topic) and the text it is found by (its newest edit's, or
//     its own), indexed for full text search in the dialect's own way
//     (dialect.go).
//   - searchapi_edits: the new text of each edit (m.replace), kept so an
//     original can go back to its previous text when an edit is
//     redacted, and take an edit that arrived before it.
//   - searchapi_timeline: every room event's position, for the context
//     around a result (events_before/events_after).
var migrations = []storage.Migration{{
	Version: 1,
	// The docs table and its full text index differ by dialect (dialect.go).
	SQLiteSQL:   sharedTablesSQL + sqliteDocsSQL,
	PostgresSQL: sharedTablesSQL + postgresDocsSQL,
}}

const sharedTablesSQL = `
CREATE TABLE searchapi_position (
	consumer TEXT PRIMARY KEY,
	pos BIGINT NOT NULL
);
CREATE TABLE searchapi_edits (
	edit_id TEXT PRIMARY KEY,
	original_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	sender TEXT NOT NULL,
	pos BIGINT NOT NULL,
	text TEXT NOT NULL
);
CREATE INDEX searchapi_edits_original ON searchapi_edits (original_id, pos);
CREATE TABLE searchapi_timeline (
	room_id TEXT NOT NULL,
	pos BIGINT NOT NULL,
	event_id TEXT NOT NULL,
	PRIMARY KEY (room_id, pos)
);`

const (
	sqlPosition    = `SELECT pos FROM searchapi_position WHERE consumer = $1`
	sqlSetPosition = `INSERT INTO searchapi_position (consumer, pos) VALUES ($1, $2)
		ON CONFLICT (consumer) DO UPDATE SET pos = excluded.pos`
	sqlInsertTimeline = `INSERT INTO searchapi_timeline (room_id, pos, event_id) VALUES ($1, $2, $3)
		ON CONFLICT (room_id, pos) DO NOTHING`
	sqlInsertDoc = `INSERT INTO searchapi_docs (event_id, room_id, sender, type, search_key, pos, text, own_text)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (event_id) DO NOTHING RETURNING id`
	sqlDocByEvent = `SELECT id, room_id, sender, search_key, text, own_text FROM searchapi_docs WHERE event_id = $1`
	sqlInsertEdit = `INSERT INTO searchapi_edits (edit_id, original_id, room_id, sender, pos, text)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (edit_id) DO NOTHING`
	sqlDeleteEdit = `DELETE FROM searchapi_edits WHERE edit_id = $1 RETURNING original_id`
	sqlNewestEdit = `SELECT text FROM searchapi_edits WHERE original_id = $1 AND room_id = $2 AND sender = $3
		ORDER BY pos DESC LIMIT 1`
	sqlUpdateDoc   = `UPDATE searchapi_docs SET text = $2 WHERE id = $1`
	sqlDeleteDoc   = `DELETE FROM searchapi_docs WHERE id = $1`
	sqlEventsAfter = `SELECT event_id, pos FROM searchapi_timeline WHERE room_id = $1 AND pos > $2
		ORDER BY pos ASC LIMIT $3`
	sqlEventsBefore = `SELECT event_id, pos FROM searchapi_timeline WHERE room_id = $1 AND pos < $2
		ORDER BY pos DESC LIMIT $3`
)
