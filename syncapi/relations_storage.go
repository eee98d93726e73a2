package syncapi

import (
	"context"
	"database/sql"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/storage"
)

// Relations (relations.go, aggregations.go, threads.go) have their own
// migrations, so that they number apart from the sync API's main list.
const relationsComponent = "syncapi_relations"

// syncapi_relations indexes every timeline event that names a parent in
// content.m.relates_to (rel_type and event_id), as it arrives, so that
// finding an event's children is an index lookup. syncapi_threads keeps
// each thread's latest activity, so /threads pages by it without
// scanning the replies.
var relationsMigrations = []storage.Migration{{
	Version: 1,
	SQL: `
CREATE TABLE syncapi_relations (
	child_id TEXT NOT NULL PRIMARY KEY,
	parent_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	rel_type TEXT NOT NULL,
	child_type TEXT NOT NULL,
	sender TEXT NOT NULL,
	-- the child's stream position and origin_server_ts (edits are ordered by it)
	pos BIGINT NOT NULL,
	ts BIGINT NOT NULL,
	-- a redacted child no longer relates to its parent
	redacted BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX syncapi_relations_parent ON syncapi_relations (parent_id, pos);
CREATE TABLE syncapi_threads (
	room_id TEXT NOT NULL,
	root_id TEXT NOT NULL,
	-- position of the newest unredacted reply
	latest_pos BIGINT NOT NULL,
	-- by room too: a reply in another room must not touch the thread
	PRIMARY KEY (room_id, root_id)
);
CREATE INDEX syncapi_threads_room ON syncapi_threads (room_id, latest_pos);`,
}, {
	// Index the relations of the events stored before the index existed,
	// once (the same rules as indexRelation, in each dialect's JSON).
	Version:     2,
	SQLiteSQL:   backfillRelationsSQLite + backfillThreads,
	PostgresSQL: backfillRelationsPostgres + backfillThreads,
}}

const (
	backfillRelationsSQLite = `
INSERT INTO syncapi_relations (child_id, parent_id, room_id, rel_type, child_type, sender, pos, ts)
SELECT event_id, json_extract(event_json, '$.content."m.relates_to".event_id'), room_id,
	json_extract(event_json, '$.content."m.relates_to".rel_type'), type, sender, pos,
	COALESCE(json_extract(event_json, '$.origin_server_ts'), 0)
FROM syncapi_events
WHERE pos IS NOT NULL AND event_json LIKE '%m.relates_to%' AND json_valid(event_json)
	AND json_type(event_json, '$.content."m.relates_to".event_id') = 'text'
	AND json_type(event_json, '$.content."m.relates_to".rel_type') = 'text'
	AND json_type(event_json, '$.unsigned.redacted_because') IS NULL
	AND length(json_extract(event_json, '$.content."m.relates_to".event_id')) BETWEEN 1 AND 255
	AND length(json_extract(event_json, '$.content."m.relates_to".rel_type')) BETWEEN 1 AND 255
	AND json_extract(event_json, '$.content."m.relates_to".event_id') <> event_id
ON CONFLICT (child_id) DO NOTHING;`
	backfillRelationsPostgres = `
INSERT INTO syncapi_relations (child_id, parent_id, room_id, rel_type, child_type, sender, pos, ts)
SELECT event_id, event_json::json #>> '{content,m.relates_to,event_id}', room_id,
	event_json::json #>> '{content,m.relates_to,rel_type}', type, sender, pos,
	COALESCE((event_json::json ->> 'origin_server_ts')::BIGINT, 0)
FROM syncapi_events
WHERE pos IS NOT NULL AND event_json LIKE '%m.relates_to%'
	AND json_typeof(event_json::json #> '{content,m.relates_to,event_id}') = 'string'
	AND json_typeof(event_json::json #> '{content,m.relates_to,rel_type}') = 'string'
	AND event_json::json #> '{unsigned,redacted_because}' IS NULL
	AND length(event_json::json #>> '{content,m.relates_to,event_id}') BETWEEN 1 AND 255
	AND length(event_json::json #>> '{content,m.relates_to,rel_type}') BETWEEN 1 AND 255
	AND event_json::json #>> '{content,m.relates_to,event_id}' <> event_id
ON CONFLICT (child_id) DO NOTHING;`
	backfillThreads = `
INSERT INTO syncapi_threads (room_id, root_id, latest_pos)
SELECT room_id, parent_id, MAX(pos) FROM syncapi_relations WHERE rel_type = 'm.thread' AND NOT redacted
GROUP BY room_id, parent_id
ON CONFLICT (room_id, root_id) DO NOTHING;`
)

const (
	relThread    = "m.thread"
	relReplace   = "m.replace"
	relReference = "m.reference"

	sqlInsertRelation = `INSERT INTO syncapi_relations (child_id, parent_id, room_id, rel_type, child_type, sender, pos, ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (child_id) DO NOTHING`
	sqlBumpThread = `INSERT INTO syncapi_threads (root_id, room_id, latest_pos) VALUES ($1, $2, $3)
		ON CONFLICT (room_id, root_id) DO UPDATE SET latest_pos = excluded.latest_pos
		WHERE excluded.latest_pos > syncapi_threads.latest_pos`
	sqlRedactRelation = `UPDATE syncapi_relations SET redacted = TRUE WHERE child_id = $1 AND NOT redacted
		RETURNING parent_id, room_id, rel_type`
	sqlLatestThreadReply = `SELECT MAX(pos) FROM syncapi_relations
		WHERE parent_id = $1 AND room_id = $2 AND rel_type = 'm.thread' AND NOT redacted`
	sqlSetThreadLatest = `UPDATE syncapi_threads SET latest_pos = $3 WHERE root_id = $1 AND room_id = $2`
	sqlDeleteThread    = `DELETE FROM syncapi_threads WHERE root_id = $1 AND room_id = $2`
)

// relationOf reads an event's m.relates_to: the parent and rel_type,
// ok false when the event names no parent through a rel_type (replies
// use m.in_reply_to alone and are not relations in this sense).
func relationOf(content []byte) (parent, relType string, ok bool) {
	rel := gjson.GetBytes(content, `m\.relates_to`)
	p, t := rel.Get("event_id"), rel.Get("rel_type")
	if !rel.IsObject() || p.Type != gjson.String || t.Type != gjson.String || p.Str == "" || t.Str == "" {
		return "", "", false
	}
	if len(p.Str) > maxIDLength || len(t.Str) > maxIDLength {
		return "", "", false
	}
	return p.Str, t.Str, true
}

// indexRelation records a timeline event's relation to its parent, in
// the consumer's transaction: O(1) per event.
func indexRelation(ctx context.Context, tx *sql.Tx, pos int64, roomID string, ev gomatrixserverlib.PDU) error {
	if ev.Redacted() {
		return nil
	}
	parent, relType, ok := relationOf(ev.Content())
	if !ok || parent == ev.EventID() {
		return nil
	}
	if _, err := tx.ExecContext(ctx, sqlInsertRelation, ev.EventID(), parent, roomID, relType, ev.Type(),
		string(ev.SenderID()), pos, int64(ev.OriginServerTS())); err != nil {
		return err
	}
	if relType == relThread {
		_, err := tx.ExecContext(ctx, sqlBumpThread, parent, roomID, pos)
		return err
	}
	return nil
}

// unindexRedacted breaks the relation of an event the roomserver has just
// redacted (its copy in syncapi_events is already the redacted form), and
// moves its thread's latest activity back to the newest remaining reply.
func unindexRedacted(ctx context.Context, tx *sql.Tx, eventID string) error {
	var js string
	err := tx.QueryRowContext(ctx, sqlEventJSONByID, eventID).Scan(&js)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if !gjson.Get(js, "unsigned.redacted_because").Exists() {
		return nil // a redaction the rules did not honour
	}
	var parent, roomID, relType string
	err = tx.QueryRowContext(ctx, sqlRedactRelation, eventID).Scan(&parent, &roomID, &relType)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil || relType != relThread {
		return err
	}
	var latest sql.NullInt64
	if err := tx.QueryRowContext(ctx, sqlLatestThreadReply, parent, roomID).Scan(&latest); err != nil {
		return err
	}
	if !latest.Valid {
		_, err = tx.ExecContext(ctx, sqlDeleteThread, parent, roomID)
		return err
	}
	_, err = tx.ExecContext(ctx, sqlSetThreadLatest, parent, roomID, latest.Int64)
	return err
}
