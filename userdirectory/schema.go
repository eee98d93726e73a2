package userdirectory

import "github.com/plexus-chat/plexus/storage"

const component = "userdirectory"

// Tables, all kept from the roomserver's output stream (indexer.go):
//   - userdirectory_position: how far the stream was read.
//   - userdirectory_rooms: the join rule and history visibility of each
//     room, which make its members visible to everyone when public.
//   - userdirectory_members: who is joined to which room now, and whether
//     they are our users (a public room counts only while one of ours is
//     in it: once this server has left, what it knows of the room goes
//     stale).
//   - userdirectory_profiles: each user's display name and avatar, from
//     their newest join event.
//   - userdirectory_words: the lower-case words of each user's display
//     name and user ID, matched by prefix.
var migrations = []storage.Migration{{
	Version: 1,
	SQL: `
CREATE TABLE userdirectory_position (
	consumer TEXT PRIMARY KEY,
	pos BIGINT NOT NULL
);
CREATE TABLE userdirectory_rooms (
	room_id TEXT PRIMARY KEY,
	join_rule TEXT NOT NULL DEFAULT '',
	history_visibility TEXT NOT NULL DEFAULT ''
);
CREATE TABLE userdirectory_members (
	room_id TEXT NOT NULL,
	user_id TEXT NOT NULL,
	is_local BOOLEAN NOT NULL,
	PRIMARY KEY (room_id, user_id)
);
CREATE INDEX userdirectory_members_user ON userdirectory_members (user_id);
CREATE TABLE userdirectory_profiles (
	user_id TEXT PRIMARY KEY,
	display_name TEXT NOT NULL,
	avatar_url TEXT NOT NULL
);
CREATE TABLE userdirectory_words (
	user_id TEXT NOT NULL,
	word TEXT NOT NULL,
	PRIMARY KEY (user_id, word)
);`,
}}

const (
	sqlPosition    = `SELECT pos FROM userdirectory_position WHERE consumer = $1`
	sqlSetPosition = `INSERT INTO userdirectory_position (consumer, pos) VALUES ($1, $2)
		ON CONFLICT (consumer) DO UPDATE SET pos = excluded.pos`
	sqlSetJoinRule = `INSERT INTO userdirectory_rooms (room_id, join_rule) VALUES ($1, $2)
		ON CONFLICT (room_id) DO UPDATE SET join_rule = excluded.join_rule`
	sqlSetHistoryVisibility = `INSERT INTO userdirectory_rooms (room_id, history_visibility) VALUES ($1, $2)
		ON CONFLICT (room_id) DO UPDATE SET history_visibility = excluded.history_visibility`
	sqlAddMember = `INSERT INTO userdirectory_members (room_id, user_id, is_local) VALUES ($1, $2, $3)
		ON CONFLICT (room_id, user_id) DO NOTHING`
	sqlRemoveMember  = `DELETE FROM userdirectory_members WHERE room_id = $1 AND user_id = $2`
	sqlUpsertProfile = `INSERT INTO userdirectory_profiles (user_id, display_name, avatar_url) VALUES ($1, $2, $3)
		ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, avatar_url = excluded.avatar_url`
	sqlDeleteWords = `DELETE FROM userdirectory_words WHERE user_id = $1`
	sqlInsertWord  = `INSERT INTO userdirectory_words (user_id, word) VALUES ($1, $2) ON CONFLICT (user_id, word) DO NOTHING`
)
