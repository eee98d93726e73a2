package keyserver

import "github.com/plexus-chat/plexus/storage"

// component is the name under which this package's migrations are recorded.
const component = "keyserver"

// migrations create the key server's tables; every statement runs on both
// SQLite and PostgreSQL. Keys are stored as the canonical JSON the device
// or user signed (without "unsigned"); signatures added later by
// cross-signing live in keyserver_signatures and are merged in when keys
// are served, so that who may see them can be decided per viewer.
var migrations = []storage.Migration{{
	Version: 1,
	SQL: `
-- Positions of the key server's counters: the device list stream, and the
-- order one-time key uploads arrived in. Transactions that advance one
-- serialise on its row, so positions become visible in order.
CREATE TABLE keyserver_streams (
	name TEXT PRIMARY KEY,
	pos BIGINT NOT NULL
);
INSERT INTO keyserver_streams (name, pos) VALUES ('device_list', 0);
INSERT INTO keyserver_streams (name, pos) VALUES ('otk_upload', 0);

-- Device keys of local users, and the cached ones of remote users.
CREATE TABLE keyserver_device_keys (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	key_json TEXT NOT NULL,
	-- the device's ed25519 key (unpadded base64), which signs its other keys
	ed25519 TEXT NOT NULL,
	-- remote devices only: the name their server gave (local ones come from accounts)
	display_name TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (user_id, device_id)
);

CREATE TABLE keyserver_one_time_keys (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	-- "algorithm:key_id"
	key_id TEXT NOT NULL,
	algorithm TEXT NOT NULL,
	key_json TEXT NOT NULL,
	-- upload order: keys are claimed oldest upload first
	seq BIGINT NOT NULL,
	PRIMARY KEY (user_id, device_id, key_id)
);
CREATE INDEX keyserver_one_time_keys_claim ON keyserver_one_time_keys (user_id, device_id, algorithm, seq);

-- At most one fallback key per device and algorithm.
CREATE TABLE keyserver_fallback_keys (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	algorithm TEXT NOT NULL,
	key_id TEXT NOT NULL,
	key_json TEXT NOT NULL,
	used BOOLEAN NOT NULL DEFAULT FALSE,
	PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: purpose is master, self_signing or user_signing.
CREATE TABLE keyserver_cross_signing_keys (
	user_id TEXT NOT NULL,
	purpose TEXT NOT NULL,
	-- the ed25519 public key (unpadded base64), also the key's ID
	public_key TEXT NOT NULL,
	key_json TEXT NOT NULL,
	PRIMARY KEY (user_id, purpose)
);

-- Signatures uploaded through /keys/signatures/upload: origin's key
-- origin_key_id signed the target's device (target_key_id = device ID)
-- or master key (target_key_id = its public key).
CREATE TABLE keyserver_signatures (
	target_user_id TEXT NOT NULL,
	target_key_id TEXT NOT NULL,
	origin_user_id TEXT NOT NULL,
	origin_key_id TEXT NOT NULL,
	signature TEXT NOT NULL,
	PRIMARY KEY (target_user_id, target_key_id, origin_user_id, origin_key_id)
);
CREATE INDEX keyserver_signatures_origin ON keyserver_signatures (origin_user_id, origin_key_id);

-- The device list stream: one row per change of a user's device list
-- (device_id '' for cross-signing keys). For local users pos is also the
-- stream_id of the m.device_list_update EDU, and the user's previous row
-- its prev_id.
CREATE TABLE keyserver_device_list_changes (
	pos BIGINT NOT NULL PRIMARY KEY,
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	deleted BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX keyserver_device_list_changes_user ON keyserver_device_list_changes (user_id, pos);

-- Remote users whose device lists are cached, with the stream_id of the
-- last update applied (federation checks prev_id against it).
CREATE TABLE keyserver_remote_device_lists (
	user_id TEXT NOT NULL PRIMARY KEY,
	stream_id BIGINT NOT NULL
);

-- Key backups: versions count up per user and are never reused; a
-- deleted version keeps its row (deleted) so that deleting it again
-- succeeds and its number is not handed out again.
CREATE TABLE keyserver_backup_versions (
	user_id TEXT NOT NULL,
	version BIGINT NOT NULL,
	algorithm TEXT NOT NULL,
	auth_data TEXT NOT NULL,
	-- bumped by every change of the version's keys
	etag BIGINT NOT NULL DEFAULT 0,
	deleted BOOLEAN NOT NULL DEFAULT FALSE,
	PRIMARY KEY (user_id, version)
);

CREATE TABLE keyserver_backup_keys (
	user_id TEXT NOT NULL,
	version BIGINT NOT NULL,
	room_id TEXT NOT NULL,
	session_id TEXT NOT NULL,
	first_message_index BIGINT NOT NULL,
	forwarded_count BIGINT NOT NULL,
	is_verified BOOLEAN NOT NULL,
	session_data TEXT NOT NULL,
	PRIMARY KEY (user_id, version, room_id, session_id)
)`,
}}

// SQL statements. $n placeholders work in both dialects.
const (
	sqlAdvanceStream = `UPDATE keyserver_streams SET pos = pos + 1 WHERE name = $1 RETURNING pos`
	sqlStreamPos     = `SELECT pos FROM keyserver_streams WHERE name = $1`

	sqlInsertChange = `INSERT INTO keyserver_device_list_changes (pos, user_id, device_id, deleted) VALUES ($1, $2, $3, $4)`
	sqlChangedUsers = `SELECT DISTINCT user_id FROM keyserver_device_list_changes WHERE pos > $1 AND pos <= $2`
	sqlChangesAfter = `SELECT pos, user_id, device_id, deleted FROM keyserver_device_list_changes
		WHERE pos > $1 AND pos <= $2 ORDER BY pos LIMIT $3`
	// Device changes only (device_id '' is a cross-signing change): the
	// prev_id and stream_id of m.device_list_update.
	sqlPrevDeviceChange   = `SELECT MAX(pos) FROM keyserver_device_list_changes WHERE user_id = $1 AND pos < $2 AND device_id <> ''`
	sqlLatestDeviceChange = `SELECT MAX(pos) FROM keyserver_device_list_changes WHERE user_id = $1 AND device_id <> ''`

	sqlSelectDeviceKeys = `SELECT device_id, key_json, display_name FROM keyserver_device_keys WHERE user_id = $1 ORDER BY device_id`
	sqlSelectDeviceKey  = `SELECT key_json, ed25519 FROM keyserver_device_keys WHERE user_id = $1 AND device_id = $2`
	sqlUpsertDeviceKeys = `INSERT INTO keyserver_device_keys (user_id, device_id, key_json, ed25519, display_name)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json, ed25519 = excluded.ed25519,
		display_name = excluded.display_name`
	sqlDeleteDeviceKeys  = `DELETE FROM keyserver_device_keys WHERE user_id = $1 AND device_id = $2`
	sqlDeleteUserDevices = `DELETE FROM keyserver_device_keys WHERE user_id = $1`
	sqlDeviceIDsWithKeys = `SELECT device_id FROM keyserver_device_keys WHERE user_id = $1
		UNION SELECT device_id FROM keyserver_one_time_keys WHERE user_id = $1
		UNION SELECT device_id FROM keyserver_fallback_keys WHERE user_id = $1`

	sqlSelectOTK  = `SELECT key_json FROM keyserver_one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3`
	sqlInsertOTK  = `INSERT INTO keyserver_one_time_keys (user_id, device_id, key_id, algorithm, key_json, seq) VALUES ($1, $2, $3, $4, $5, $6)`
	sqlCountOTKs  = `SELECT algorithm, COUNT(*) FROM keyserver_one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm`
	sqlOldestOTK  = `SELECT key_id FROM keyserver_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY seq, key_id LIMIT 1`
	sqlClaimOTK   = `DELETE FROM keyserver_one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3 RETURNING key_json`
	sqlDeleteOTKs = `DELETE FROM keyserver_one_time_keys WHERE user_id = $1 AND device_id = $2`

	sqlSelectFallback = `SELECT key_id, key_json FROM keyserver_fallback_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3`
	sqlUpsertFallback = `INSERT INTO keyserver_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) VALUES ($1, $2, $3, $4, $5, FALSE)
		ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json, used = FALSE`
	sqlUseFallback     = `UPDATE keyserver_fallback_keys SET used = TRUE WHERE user_id = $1 AND device_id = $2 AND algorithm = $3`
	sqlUnusedFallbacks = `SELECT algorithm FROM keyserver_fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used ORDER BY algorithm`
	sqlDeleteFallbacks = `DELETE FROM keyserver_fallback_keys WHERE user_id = $1 AND device_id = $2`

	sqlSelectCrossSigning = `SELECT purpose, public_key, key_json FROM keyserver_cross_signing_keys WHERE user_id = $1`
	sqlUpsertCrossSigning = `INSERT INTO keyserver_cross_signing_keys (user_id, purpose, public_key, key_json) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, purpose) DO UPDATE SET public_key = excluded.public_key, key_json = excluded.key_json`
	sqlDeleteCrossSigning = `DELETE FROM keyserver_cross_signing_keys WHERE user_id = $1 AND purpose = $2`
	sqlInsertSignature    = `INSERT INTO keyserver_signatures (target_user_id, target_key_id, origin_user_id, origin_key_id, signature)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (target_user_id, target_key_id, origin_user_id, origin_key_id) DO UPDATE SET signature = excluded.signature`
	sqlSelectSignatures = `SELECT origin_user_id, origin_key_id, signature FROM keyserver_signatures WHERE target_user_id = $1 AND target_key_id = $2`
	sqlDeleteTargetSigs = `DELETE FROM keyserver_signatures WHERE target_user_id = $1 AND target_key_id = $2`
	sqlDeleteOriginSigs = `DELETE FROM keyserver_signatures WHERE origin_user_id = $1 AND origin_key_id = $2`
	sqlSelectRemoteList = `SELECT stream_id FROM keyserver_remote_device_lists WHERE user_id = $1`
	sqlUpsertRemoteList = `INSERT INTO keyserver_remote_device_lists (user_id, stream_id) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id`
	sqlSelectBackupVersion = `SELECT version, algorithm, auth_data, etag, deleted FROM keyserver_backup_versions WHERE user_id = $1 AND version = $2`
	sqlCurrentBackup       = `SELECT version, algorithm, auth_data, etag, deleted FROM keyserver_backup_versions
		WHERE user_id = $1 AND NOT deleted ORDER BY version DESC LIMIT 1`
	sqlMaxBackupVersion = `SELECT COALESCE(MAX(version), 0) FROM keyserver_backup_versions WHERE user_id = $1`
	sqlInsertBackup     = `INSERT INTO keyserver_backup_versions (user_id, version, algorithm, auth_data) VALUES ($1, $2, $3, $4)`
	sqlUpdateBackup     = `UPDATE keyserver_backup_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2`
	sqlDeleteBackup     = `UPDATE keyserver_backup_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2`
	sqlBumpBackupETag   = `UPDATE keyserver_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2 RETURNING etag`
	sqlCountBackupKeys  = `SELECT COUNT(*) FROM keyserver_backup_keys WHERE user_id = $1 AND version = $2`
	sqlSelectBackupKey  = `SELECT first_message_index, forwarded_count, is_verified FROM keyserver_backup_keys
		WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4`
	sqlUpsertBackupKey = `INSERT INTO keyserver_backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET first_message_index = excluded.first_message_index,
		forwarded_count = excluded.forwarded_count, is_verified = excluded.is_verified, session_data = excluded.session_data`
	sqlBackupKeysAll = `SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
		FROM keyserver_backup_keys WHERE user_id = $1 AND version = $2`
	sqlDeleteBackupKeysAll     = `DELETE FROM keyserver_backup_keys WHERE user_id = $1 AND version = $2`
	sqlDeleteBackupKeysRoom    = `DELETE FROM keyserver_backup_keys WHERE user_id = $1 AND version = $2 AND room_id = $3`
	sqlDeleteBackupKeysSession = `DELETE FROM keyserver_backup_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4`
)
