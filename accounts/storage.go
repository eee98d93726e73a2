package accounts

import "github.com/plexus-chat/plexus/storage"

// component is the name under which this package's migrations are recorded.
const component = "accounts"

// migrations create the accounts tables. Every statement is written once
// and runs unchanged on SQLite and PostgreSQL.
//
// Tokens live as columns on the device row: a device has at most one live
// access token and one refresh token, and the schema makes that invariant
// impossible to break. Only SHA-256 hashes of tokens are stored.
var migrations = []storage.Migration{
	{Version: 1, SQL: `
CREATE TABLE accounts_users (
	localpart TEXT PRIMARY KEY,
	-- bcrypt hash; '' means the account cannot log in with a password.
	password_hash TEXT NOT NULL DEFAULT '',
	is_admin BOOLEAN NOT NULL DEFAULT FALSE,
	is_guest BOOLEAN NOT NULL DEFAULT FALSE,
	deactivated BOOLEAN NOT NULL DEFAULT FALSE,
	created_ts BIGINT NOT NULL,
	-- The ID the next stored filter of this user gets.
	next_filter_id BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE accounts_profiles (
	localpart TEXT PRIMARY KEY REFERENCES accounts_users (localpart),
	display_name TEXT NOT NULL DEFAULT '',
	avatar_url TEXT NOT NULL DEFAULT ''
);

CREATE TABLE accounts_devices (
	localpart TEXT NOT NULL REFERENCES accounts_users (localpart),
	device_id TEXT NOT NULL,
	display_name TEXT NOT NULL DEFAULT '',
	last_seen_ip TEXT NOT NULL DEFAULT '',
	last_seen_ts BIGINT NOT NULL DEFAULT 0,
	created_ts BIGINT NOT NULL,
	-- Hex SHA-256 of the live access token.
	access_hash TEXT NOT NULL,
	-- ms since the epoch; 0 means the access token never expires.
	access_expires_ts BIGINT NOT NULL DEFAULT 0,
	-- Hex SHA-256 of the live refresh token; NULL when there is none
	-- (NULLs do not collide in a UNIQUE column in either database).
	refresh_hash TEXT UNIQUE,
	PRIMARY KEY (localpart, device_id)
);
-- Authenticate looks devices up by token hash.
CREATE UNIQUE INDEX accounts_devices_access_hash ON accounts_devices (access_hash);

CREATE TABLE accounts_account_data (
	localpart TEXT NOT NULL REFERENCES accounts_users (localpart),
	room_id TEXT NOT NULL,
	type TEXT NOT NULL,
	content TEXT NOT NULL,
	stream_pos BIGINT NOT NULL,
	PRIMARY KEY (localpart, room_id, type)
);
CREATE INDEX accounts_account_data_stream ON accounts_account_data (localpart, stream_pos);

-- One row per stream; transactions that advance a stream serialise on its
-- row, so positions become visible in order.
CREATE TABLE accounts_streams (
	name TEXT PRIMARY KEY,
	pos BIGINT NOT NULL
);
INSERT INTO accounts_streams (name, pos) VALUES ('account_data', 0);

CREATE TABLE accounts_filters (
	localpart TEXT NOT NULL REFERENCES accounts_users (localpart),
	filter_id TEXT NOT NULL,
	filter TEXT NOT NULL,
	PRIMARY KEY (localpart, filter_id)
)`},
}

// SQL statements. $n placeholders work in both dialects.
const (
	sqlInsertUser = `INSERT INTO accounts_users (localpart, password_hash, is_admin, is_guest, created_ts)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (localpart) DO NOTHING`
	sqlInsertProfile = `INSERT INTO accounts_profiles (localpart, display_name, avatar_url) VALUES ($1, $2, '')`
	sqlSelectAccount = `SELECT localpart, is_admin, is_guest, deactivated, created_ts
		FROM accounts_users WHERE localpart = $1`
	sqlCountUser         = `SELECT COUNT(*) FROM accounts_users WHERE localpart = $1`
	sqlSelectPassword    = `SELECT password_hash, is_admin, is_guest, deactivated, created_ts FROM accounts_users WHERE localpart = $1`
	sqlUpdatePassword    = `UPDATE accounts_users SET password_hash = $2 WHERE localpart = $1`
	sqlDeactivateUser    = `UPDATE accounts_users SET deactivated = TRUE WHERE localpart = $1`
	sqlDeleteUserDevices = `DELETE FROM accounts_devices WHERE localpart = $1`
	sqlDeleteProfile     = `DELETE FROM accounts_profiles WHERE localpart = $1`
	// sqlLockUser reads the account's state and, on PostgreSQL, locks its row
	// for the rest of the transaction, so a concurrent Deactivate cannot
	// slip in between the check and the write that depends on it.
	sqlLockUser = `UPDATE accounts_users SET deactivated = deactivated WHERE localpart = $1 RETURNING deactivated`

	sqlInsertDevice = `INSERT INTO accounts_devices
		(localpart, device_id, display_name, last_seen_ip, last_seen_ts, created_ts, access_hash, access_expires_ts, refresh_hash)
		VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)
		ON CONFLICT (localpart, device_id) DO NOTHING
		RETURNING display_name, last_seen_ip, last_seen_ts`
	// sqlUpsertDevice re-logs an existing device in: its old tokens are
	// replaced (and so revoked), its name kept unless a new one is given.
	sqlUpsertDevice = `INSERT INTO accounts_devices
		(localpart, device_id, display_name, last_seen_ip, last_seen_ts, created_ts, access_hash, access_expires_ts, refresh_hash)
		VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)
		ON CONFLICT (localpart, device_id) DO UPDATE SET
			display_name = CASE WHEN excluded.display_name <> '' THEN excluded.display_name ELSE accounts_devices.display_name END,
			last_seen_ip = excluded.last_seen_ip,
			last_seen_ts = excluded.last_seen_ts,
			access_hash = excluded.access_hash,
			access_expires_ts = excluded.access_expires_ts,
			refresh_hash = excluded.refresh_hash
		RETURNING display_name, last_seen_ip, last_seen_ts`
	sqlAuthenticate = `SELECT d.localpart, d.device_id, d.access_expires_ts, u.is_admin, u.is_guest, u.deactivated
		FROM accounts_devices d JOIN accounts_users u ON u.localpart = d.localpart
		WHERE d.access_hash = $1`
	sqlUpdateLastSeen = `UPDATE accounts_devices SET last_seen_ip = $2, last_seen_ts = $3 WHERE access_hash = $1`
	sqlRefresh        = `UPDATE accounts_devices SET access_hash = $2, access_expires_ts = $3, refresh_hash = $4
		WHERE refresh_hash = $1 RETURNING localpart`
	sqlSelectDevices = `SELECT localpart, device_id, display_name, last_seen_ip, last_seen_ts
		FROM accounts_devices WHERE localpart = $1 ORDER BY device_id`
	sqlSelectDevice = `SELECT localpart, device_id, display_name, last_seen_ip, last_seen_ts
		FROM accounts_devices WHERE localpart = $1 AND device_id = $2`
	sqlUpdateDeviceName   = `UPDATE accounts_devices SET display_name = $3 WHERE localpart = $1 AND device_id = $2`
	sqlDeleteDevice       = `DELETE FROM accounts_devices WHERE localpart = $1 AND device_id = $2`
	sqlDeleteOtherDevices = `DELETE FROM accounts_devices WHERE localpart = $1 AND device_id <> $2`

	sqlSelectProfile = `SELECT p.display_name, p.avatar_url
		FROM accounts_profiles p JOIN accounts_users u ON u.localpart = p.localpart
		WHERE p.localpart = $1 AND NOT u.deactivated`
	sqlUpdateDisplayName = `UPDATE accounts_profiles SET display_name = $2 WHERE localpart = $1`
	sqlUpdateAvatarURL   = `UPDATE accounts_profiles SET avatar_url = $2 WHERE localpart = $1`

	sqlNextAccountDataPos = `UPDATE accounts_streams SET pos = pos + 1 WHERE name = 'account_data' RETURNING pos`
	sqlAccountDataPos     = `SELECT pos FROM accounts_streams WHERE name = 'account_data'`
	sqlUpsertAccountData  = `INSERT INTO accounts_account_data (localpart, room_id, type, content, stream_pos)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (localpart, room_id, type) DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos`
	sqlSelectAccountData = `SELECT content FROM accounts_account_data
		WHERE localpart = $1 AND room_id = $2 AND type = $3`
	sqlAccountDataSince = `SELECT room_id, type, content, stream_pos FROM accounts_account_data
		WHERE localpart = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos`

	sqlNextFilterID = `UPDATE accounts_users SET next_filter_id = next_filter_id + 1
		WHERE localpart = $1 RETURNING next_filter_id - 1`
	sqlInsertFilter = `INSERT INTO accounts_filters (localpart, filter_id, filter) VALUES ($1, $2, $3)`
	sqlSelectFilter = `SELECT filter FROM accounts_filters WHERE localpart = $1 AND filter_id = $2`
)
