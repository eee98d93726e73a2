package syncapi

import "github.com/plexus-chat/plexus/storage"

const component = "syncapi"

// The sync API keeps its own copy of what clients read: the room events
// in stream order with the state changes each made, and each room's
// current state. It is filled from the roomserver's output stream, so it
// can answer /sync without asking the roomserver.
var migrations = []storage.Migration{{
	Version: 1,
	SQL: `
CREATE TABLE syncapi_events (
	event_id TEXT NOT NULL PRIMARY KEY,
	-- stream position; NULL for state events that never were in the timeline
	pos BIGINT UNIQUE,
	room_id TEXT NOT NULL,
	type TEXT NOT NULL,
	sender TEXT NOT NULL,
	-- NULL when not a state event
	state_key TEXT,
	-- the membership of m.room.member events
	membership TEXT,
	room_version TEXT NOT NULL,
	event_json TEXT NOT NULL,
	txn_id TEXT NOT NULL DEFAULT '',
	device_id TEXT NOT NULL DEFAULT '',
	-- the change this event made to the room's current state: JSON arrays of event IDs
	adds_state TEXT NOT NULL DEFAULT '[]',
	removes_state TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX syncapi_events_room_pos ON syncapi_events (room_id, pos);
CREATE INDEX syncapi_events_member ON syncapi_events (state_key, type, pos);
CREATE TABLE syncapi_current_state (
	room_id TEXT NOT NULL,
	type TEXT NOT NULL,
	state_key TEXT NOT NULL,
	event_id TEXT NOT NULL,
	membership TEXT,
	pos BIGINT NOT NULL,
	PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX syncapi_current_state_key ON syncapi_current_state (type, state_key);
CREATE TABLE syncapi_consumer (
	name TEXT NOT NULL PRIMARY KEY,
	pos BIGINT NOT NULL
);`,
}, {
	// Send-to-device messages and presence (todevice.go, presence.go).
	Version: 2,
	SQL: `
-- positions of the streams whose rows are deleted or change in place
CREATE TABLE syncapi_stream_counters (
	stream TEXT NOT NULL PRIMARY KEY,
	pos BIGINT NOT NULL
);
-- messages waiting for a device until it acknowledges them
CREATE TABLE syncapi_send_to_device (
	pos BIGINT NOT NULL PRIMARY KEY,
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	sender TEXT NOT NULL,
	type TEXT NOT NULL,
	content TEXT NOT NULL
);
CREATE INDEX syncapi_send_to_device_recipient ON syncapi_send_to_device (user_id, device_id, pos);
-- transaction IDs of recent sends, so that a retry is a no-op
CREATE TABLE syncapi_send_to_device_txns (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	txn_id TEXT NOT NULL,
	ts BIGINT NOT NULL,
	PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE TABLE syncapi_presence (
	user_id TEXT NOT NULL PRIMARY KEY,
	presence TEXT NOT NULL,
	status_msg TEXT,
	last_active_ts BIGINT NOT NULL,
	last_seen_ts BIGINT NOT NULL,
	-- position of the last change others see
	pos BIGINT NOT NULL
);
CREATE INDEX syncapi_presence_pos ON syncapi_presence (pos);`,
}, {
	// Receipts (receipts.go): each user's latest per room, type and thread.
	Version: 3,
	SQL: `
CREATE TABLE syncapi_receipts (
	room_id TEXT NOT NULL,
	user_id TEXT NOT NULL,
	receipt_type TEXT NOT NULL,
	-- '' for an unthreaded receipt, else 'main' or a thread root's event ID
	thread_id TEXT NOT NULL,
	event_id TEXT NOT NULL,
	ts BIGINT NOT NULL,
	-- position in the receipt stream of the last change
	pos BIGINT NOT NULL,
	PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX syncapi_receipts_room_pos ON syncapi_receipts (room_id, pos);
CREATE INDEX syncapi_receipts_pos ON syncapi_receipts (pos);
CREATE INDEX syncapi_receipts_user ON syncapi_receipts (user_id);
-- the receipt stream's position, one row
CREATE TABLE syncapi_receipt_stream (pos BIGINT NOT NULL);
INSERT INTO syncapi_receipt_stream (pos) VALUES (0);`,
}, {
	// Lazy-loaded members (lazyload.go): whose member events each device
	// has been sent in each room, so they are not sent again.
	Version: 4,
	SQL: `
CREATE TABLE syncapi_lazy_members (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	member TEXT NOT NULL,
	PRIMARY KEY (user_id, device_id, room_id, member)
);`,
}, {
	// Push (push.go, notifications.go, pushers.go): the notifications push
	// rules made for each local user, which drive unread counts and
	// /notifications, and the users' pushers.
	Version: 5,
	SQL: `
CREATE TABLE syncapi_notifications (
	user_id TEXT NOT NULL,
	-- the event's stream position (one notification per event and user)
	pos BIGINT NOT NULL,
	room_id TEXT NOT NULL,
	event_id TEXT NOT NULL,
	-- 'main', or the root event ID of the thread the event is in
	thread_id TEXT NOT NULL,
	highlight BOOLEAN NOT NULL,
	-- the actions of the rule that matched, a JSON array
	actions TEXT NOT NULL,
	ts BIGINT NOT NULL,
	PRIMARY KEY (user_id, pos)
);
CREATE INDEX syncapi_notifications_room ON syncapi_notifications (user_id, room_id, pos);
CREATE TABLE syncapi_pushers (
	user_id TEXT NOT NULL,
	app_id TEXT NOT NULL,
	pushkey TEXT NOT NULL,
	kind TEXT NOT NULL,
	app_display_name TEXT NOT NULL,
	device_display_name TEXT NOT NULL,
	profile_tag TEXT NOT NULL,
	lang TEXT NOT NULL,
	-- a JSON object
	data TEXT NOT NULL,
	-- the device that set it
	device_id TEXT NOT NULL,
	created_ts BIGINT NOT NULL,
	PRIMARY KEY (app_id, pushkey, user_id)
);
CREATE INDEX syncapi_pushers_user ON syncapi_pushers (user_id);`,
}, {
	// Every /sync lists the user's memberships (and presence and device
	// lists ask who shares a room with whom): an index that holds the
	// columns they read answers them without a seek into the table per
	// room. (Not a partial index on type = 'm.room.member': SQLite then
	// compiles the statements that read the table again at every run.)
	Version: 6,
	SQL: `
CREATE INDEX syncapi_current_state_member ON syncapi_current_state (type, state_key, membership, room_id, event_id, pos);
DROP INDEX syncapi_current_state_key;`,
}}

const (
	sqlInsertEvent = `INSERT INTO syncapi_events (event_id, pos, room_id, type, sender, state_key, membership,
		room_version, event_json, txn_id, device_id, adds_state, removes_state)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
		ON CONFLICT (event_id) DO UPDATE SET pos = excluded.pos, txn_id = excluded.txn_id,
		device_id = excluded.device_id, adds_state = excluded.adds_state, removes_state = excluded.removes_state`
	sqlInsertStateOnlyEvent = `INSERT INTO syncapi_events (event_id, room_id, type, sender, state_key, membership, room_version, event_json)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING`
	sqlUpdateEventJSON = `UPDATE syncapi_events SET event_json = $2 WHERE event_id = $1`
	sqlEventByID       = `SELECT room_version, event_json FROM syncapi_events WHERE event_id = $1`
	sqlKnownEvent      = `SELECT 1 FROM syncapi_events WHERE event_id = $1`

	sqlUpsertState = `INSERT INTO syncapi_current_state (room_id, type, state_key, event_id, membership, pos)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id,
		membership = excluded.membership, pos = excluded.pos`
	sqlDeleteState = `DELETE FROM syncapi_current_state WHERE room_id = $1 AND type = $2 AND state_key = $3 AND event_id = $4`

	sqlConsumerPos    = `SELECT pos FROM syncapi_consumer WHERE name = $1`
	sqlSetConsumerPos = `INSERT INTO syncapi_consumer (name, pos) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET pos = excluded.pos`

	// The user's current memberships, with the position they were set at.
	sqlUserMemberships = `SELECT room_id, membership, event_id, pos FROM syncapi_current_state
		WHERE type = 'm.room.member' AND state_key = $1`
	// Rooms where the user's membership changed in a window.
	sqlMembershipChanges = `SELECT DISTINCT room_id FROM syncapi_events
		WHERE type = 'm.room.member' AND state_key = $1 AND pos > $2 AND pos <= $3`
	sqlJoinedUsers = `SELECT state_key FROM syncapi_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`
	sqlCurrentState      = `SELECT s.type, s.state_key, s.event_id FROM syncapi_current_state s WHERE s.room_id = $1`
	sqlCurrentStateEvent = `SELECT e.room_version, e.event_json FROM syncapi_current_state s
		JOIN syncapi_events e ON e.event_id = s.event_id WHERE s.room_id = $1 AND s.type = $2 AND s.state_key = $3`

	// The newest events of a room in a window, newest first.
	sqlRoomEventsDesc = `SELECT pos, event_id, room_version, event_json, txn_id, device_id FROM syncapi_events
		WHERE room_id = $1 AND pos > $2 AND pos <= $3 ORDER BY pos DESC LIMIT $4`
	sqlRoomEventsAsc = `SELECT pos, event_id, room_version, event_json, txn_id, device_id FROM syncapi_events
		WHERE room_id = $1 AND pos > $2 AND pos <= $3 ORDER BY pos ASC LIMIT $4`
	// The state changes of a room after a position, newest first.
	sqlStateChangesDesc = `SELECT pos, adds_state, removes_state FROM syncapi_events
		WHERE room_id = $1 AND pos > $2 AND pos <= $3 AND (adds_state <> '[]' OR removes_state <> '[]') ORDER BY pos DESC`
	sqlEventKeys = `SELECT event_id, type, state_key FROM syncapi_events WHERE event_id = $1`
)
