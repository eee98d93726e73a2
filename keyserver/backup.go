package keyserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/plexus-chat/plexus/storage"
)

// Server-side key backups. A user's versions count up from 1; the current
// version is the newest one not deleted, and only it takes writes.

// BackupAlgorithm is the one backup algorithm the spec defines.
const BackupAlgorithm = "m.megolm_backup.v1.curve25519-aes-sha2"

type backupRow struct {
	version   int64
	algorithm string
	authData  string
	etag      int64
	deleted   bool
}

func (r *backupRow) info(count int) *BackupVersion {
	return &BackupVersion{
		Version: strconv.FormatInt(r.version, 10), Algorithm: r.algorithm,
		AuthData: json.RawMessage(r.authData), Count: count, ETag: strconv.FormatInt(r.etag, 10),
	}
}

func checkAuthData(algorithm string, authData json.RawMessage) error {
	if algorithm != BackupAlgorithm {
		return newErr(CodeInvalidParam, "unsupported backup algorithm %q", algorithm)
	}
	var ad struct {
		PublicKey *string `json:"public_key"`
	}
	if isNull(authData) || json.Unmarshal(authData, &ad) != nil {
		return newErr(CodeInvalidParam, "auth_data must be an object")
	}
	if ad.PublicKey == nil || *ad.PublicKey == "" {
		return newErr(CodeInvalidParam, "auth_data.public_key is required")
	}
	return nil
}

// parseVersion reads a version string; ok false for one this server never
// hands out.
func parseVersion(v string) (int64, bool) {
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n > 0 && strconv.FormatInt(n, 10) == v
}

func scanBackup(row *sql.Row) (*backupRow, error) {
	var r backupRow
	err := row.Scan(&r.version, &r.algorithm, &r.authData, &r.etag, &r.deleted)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// CreateBackup implements API.
func (k *KeyServer) CreateBackup(ctx context.Context, userID, algorithm string, authData json.RawMessage) (string, error) {
	if err := checkAuthData(algorithm, authData); err != nil {
		return "", err
	}
	compact, err := canonicalObject(authData)
	if err != nil {
		return "", newErr(CodeInvalidParam, "auth_data must be an object")
	}
	var version int64
	for range 5 { // two creations at once may pick the same number
		err = k.db.WithTx(ctx, func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, sqlMaxBackupVersion, userID).Scan(&version); err != nil {
				return err
			}
			version++
			_, err := tx.ExecContext(ctx, sqlInsertBackup, userID, version, algorithm, string(compact))
			return err
		})
		if !storage.IsUniqueViolation(err) {
			break
		}
	}
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(version, 10), nil
}

// backupVersion reads a version, nil when unknown or deleted; "" is the
// current version.
func (k *KeyServer) backupVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, userID, version string) (*backupRow, error) {
	if version == "" {
		return scanBackup(q.QueryRowContext(ctx, sqlCurrentBackup, userID))
	}
	n, ok := parseVersion(version)
	if !ok {
		return nil, nil
	}
	r, err := scanBackup(q.QueryRowContext(ctx, sqlSelectBackupVersion, userID, n))
	if err != nil || r == nil || r.deleted {
		return nil, err
	}
	return r, nil
}

func countBackupKeys(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, userID string, version int64) (int, error) {
	var n int
	err := q.QueryRowContext(ctx, sqlCountBackupKeys, userID, version).Scan(&n)
	return n, err
}

// Backup implements API.
func (k *KeyServer) Backup(ctx context.Context, userID, version string) (*BackupVersion, error) {
	var info *BackupVersion
	err := k.db.ReadTx(ctx, func(tx *sql.Tx) error {
		r, err := k.backupVersion(ctx, tx, userID, version)
		if err != nil {
			return err
		}
		if r == nil {
			if version == "" {
				return newErr(CodeNotFound, "No current backup version")
			}
			return newErr(CodeNotFound, "Unknown backup version")
		}
		n, err := countBackupKeys(ctx, tx, userID, r.version)
		if err != nil {
			return err
		}
		info = r.info(n)
		return nil
	})
	return info, err
}

// UpdateBackup implements API.
func (k *KeyServer) UpdateBackup(ctx context.Context, userID, version, algorithm string, authData json.RawMessage) error {
	return k.db.WithTx(ctx, func(tx *sql.Tx) error {
		r, err := k.backupVersion(ctx, tx, userID, version)
		if err != nil {
			return err
		}
		if r == nil {
			return newErr(CodeNotFound, "Unknown backup version")
		}
		if algorithm != r.algorithm {
			return newErr(CodeInvalidParam, "Algorithm does not match")
		}
		if err := checkAuthData(algorithm, authData); err != nil {
			return err
		}
		compact, err := canonicalObject(authData)
		if err != nil {
			return newErr(CodeInvalidParam, "auth_data must be an object")
		}
		_, err = tx.ExecContext(ctx, sqlUpdateBackup, userID, r.version, string(compact))
		return err
	})
}

// DeleteBackup implements API. Deleting a deleted version succeeds.
func (k *KeyServer) DeleteBackup(ctx context.Context, userID, version string) error {
	n, ok := parseVersion(version)
	if !ok {
		return newErr(CodeNotFound, "Unknown backup version")
	}
	return k.db.WithTx(ctx, func(tx *sql.Tx) error {
		r, err := scanBackup(tx.QueryRowContext(ctx, sqlSelectBackupVersion, userID, n))
		if err != nil {
			return err
		}
		if r == nil {
			return newErr(CodeNotFound, "Unknown backup version")
		}
		if _, err := tx.ExecContext(ctx, sqlDeleteBackup, userID, n); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, sqlDeleteBackupKeysAll, userID, n)
		return err
	})
}

// currentForWrite checks that version is the current backup: 404 when
// there is none, 403 M_WRONG_ROOM_KEYS_VERSION when another one is.
func (k *KeyServer) currentForWrite(ctx context.Context, tx *sql.Tx, userID, version string) (*backupRow, error) {
	cur, err := scanBackup(tx.QueryRowContext(ctx, sqlCurrentBackup, userID))
	if err != nil {
		return nil, err
	}
	if cur == nil {
		return nil, newErr(CodeNotFound, "Unknown backup version")
	}
	if n, ok := parseVersion(version); !ok || n != cur.version {
		e := newErr(CodeWrongBackupVersion, "Wrong backup version.")
		e.CurrentVersion = strconv.FormatInt(cur.version, 10)
		return nil, e
	}
	return cur, nil
}

// better reports whether backed-up session a should replace b, by the
// spec's order: verified first, then the lower first message index, then
// the lower forwarded count. An equal key does not replace.
func better(a, b BackupKey) bool {
	if a.IsVerified != b.IsVerified {
		return a.IsVerified
	}
	if a.FirstMessageIndex != b.FirstMessageIndex {
		return a.FirstMessageIndex < b.FirstMessageIndex
	}
	return a.ForwardedCount < b.ForwardedCount
}

// PutBackupKeys implements API.
func (k *KeyServer) PutBackupKeys(ctx context.Context, userID, version string, keys BackupKeys) (string, int, error) {
	for roomID, sessions := range keys {
		for sessionID, key := range sessions {
			var obj map[string]json.RawMessage
			if isNull(key.SessionData) || json.Unmarshal(key.SessionData, &obj) != nil {
				return "", 0, newErr(CodeInvalidParam, "%s/%s: session_data must be an object", roomID, sessionID)
			}
		}
	}
	var etag int64
	var count int
	err := k.db.WithTx(ctx, func(tx *sql.Tx) error {
		cur, err := k.currentForWrite(ctx, tx, userID, version)
		if err != nil {
			return err
		}
		etag = cur.etag
		changed := false
		for _, roomID := range sortedKeys(keys) {
			for _, sessionID := range sortedKeys(keys[roomID]) {
				key := keys[roomID][sessionID]
				var old BackupKey
				err := tx.QueryRowContext(ctx, sqlSelectBackupKey, userID, cur.version, roomID, sessionID).
					Scan(&old.FirstMessageIndex, &old.ForwardedCount, &old.IsVerified)
				if err != nil && !errors.Is(err, sql.ErrNoRows) {
					return err
				}
				if err == nil && !better(key, old) {
					continue
				}
				if _, err := tx.ExecContext(ctx, sqlUpsertBackupKey, userID, cur.version, roomID, sessionID,
					key.FirstMessageIndex, key.ForwardedCount, key.IsVerified, string(key.SessionData)); err != nil {
					return err
				}
				changed = true
			}
		}
		if changed {
			if err := tx.QueryRowContext(ctx, sqlBumpBackupETag, userID, cur.version).Scan(&etag); err != nil {
				return err
			}
		}
		count, err = countBackupKeys(ctx, tx, userID, cur.version)
		return err
	})
	if err != nil {
		return "", 0, err
	}
	return strconv.FormatInt(etag, 10), count, nil
}

// BackupKeys implements API.
func (k *KeyServer) BackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (BackupKeys, error) {
	out := BackupKeys{}
	err := k.db.ReadTx(ctx, func(tx *sql.Tx) error {
		r, err := k.backupVersion(ctx, tx, userID, version)
		if err != nil {
			return err
		}
		if r == nil {
			return newErr(CodeNotFound, "Unknown backup version")
		}
		query, args := sqlBackupKeysAll, []any{userID, r.version}
		if roomID != "" {
			query += ` AND room_id = $3`
			args = append(args, roomID)
			if sessionID != "" {
				query += ` AND session_id = $4`
				args = append(args, sessionID)
			}
		}
		rows, err := tx.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var room, session, data string
			var key BackupKey
			if err := rows.Scan(&room, &session, &key.FirstMessageIndex, &key.ForwardedCount, &key.IsVerified, &data); err != nil {
				return err
			}
			key.SessionData = json.RawMessage(data)
			if out[room] == nil {
				out[room] = map[string]BackupKey{}
			}
			out[room][session] = key
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	if sessionID != "" && len(out) == 0 {
		return nil, newErr(CodeNotFound, "Key not found")
	}
	return out, nil
}

// DeleteBackupKeys implements API.
func (k *KeyServer) DeleteBackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (string, int, error) {
	var etag int64
	var count int
	err := k.db.WithTx(ctx, func(tx *sql.Tx) error {
		cur, err := k.currentForWrite(ctx, tx, userID, version)
		if err != nil {
			return err
		}
		etag = cur.etag
		var res sql.Result
		switch {
		case roomID == "":
			res, err = tx.ExecContext(ctx, sqlDeleteBackupKeysAll, userID, cur.version)
		case sessionID == "":
			res, err = tx.ExecContext(ctx, sqlDeleteBackupKeysRoom, userID, cur.version, roomID)
		default:
			res, err = tx.ExecContext(ctx, sqlDeleteBackupKeysSession, userID, cur.version, roomID, sessionID)
		}
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n > 0 {
			if err := tx.QueryRowContext(ctx, sqlBumpBackupETag, userID, cur.version).Scan(&etag); err != nil {
				return err
			}
		}
		count, err = countBackupKeys(ctx, tx, userID, cur.version)
		return err
	})
	if err != nil {
		return "", 0, err
	}
	return strconv.FormatInt(etag, 10), count, nil
}
