package accounts

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/plexus-chat/plexus/storage"
)

// Login tokens (m.login.token): short-lived and single-use, issued to a
// logged-in user through POST /login/get_token to log in another device.
// Only their SHA-256 is stored, like access tokens. Their table has its own
// migration stream so that it stays apart from the accounts schema.

const loginTokenComponent = "accounts_login_tokens"

var loginTokenMigrations = []storage.Migration{
	{Version: 1, SQL: `
CREATE TABLE accounts_login_tokens (
	-- hex SHA-256 of the token
	token_hash TEXT PRIMARY KEY,
	localpart TEXT NOT NULL REFERENCES accounts_users (localpart),
	-- ms since the epoch
	expires_ts BIGINT NOT NULL
);
CREATE INDEX accounts_login_tokens_expiry ON accounts_login_tokens (expires_ts)`},
}

const (
	loginTokenPrefix = "plxl_"

	sqlInsertLoginToken  = `INSERT INTO accounts_login_tokens (token_hash, localpart, expires_ts) VALUES ($1, $2, $3)`
	sqlDeleteLoginToken  = `DELETE FROM accounts_login_tokens WHERE token_hash = $1 RETURNING localpart, expires_ts`
	sqlDeleteOldLogins   = `DELETE FROM accounts_login_tokens WHERE expires_ts <= $1`
	sqlSelectDeactivated = `SELECT deactivated FROM accounts_users WHERE localpart = $1`
)

// migrateLoginTokens creates the login token table.
func migrateLoginTokens(ctx context.Context, db *storage.DB) error {
	return db.Migrate(ctx, loginTokenComponent, loginTokenMigrations)
}

// CreateLoginToken issues a login token for the user, valid for lifetime.
func (a *Accounts) CreateLoginToken(ctx context.Context, localpart string, lifetime time.Duration) (string, error) {
	localpart = normalise(localpart)
	token := newToken(loginTokenPrefix)
	now := time.Now()
	w := a.db.Writer()
	// Expired tokens go whenever a new one comes: they are few.
	if _, err := w.ExecContext(ctx, sqlDeleteOldLogins, now.UnixMilli()); err != nil {
		return "", err
	}
	if _, err := w.ExecContext(ctx, sqlInsertLoginToken, hashToken(token), localpart, now.Add(lifetime).UnixMilli()); err != nil {
		return "", err
	}
	return token, nil
}

// ConsumeLoginToken uses up a login token and returns whose it was:
// ErrUnknownToken when it is unknown, used or expired; ErrDeactivated.
func (a *Accounts) ConsumeLoginToken(ctx context.Context, token string) (string, error) {
	var localpart string
	var expires int64
	err := a.db.Writer().QueryRowContext(ctx, sqlDeleteLoginToken, hashToken(token)).Scan(&localpart, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrUnknownToken
	}
	if err != nil {
		return "", err
	}
	if expires <= time.Now().UnixMilli() {
		return "", ErrUnknownToken
	}
	var deactivated bool
	if err := a.db.Reader().QueryRowContext(ctx, sqlSelectDeactivated, localpart).Scan(&deactivated); err != nil {
		return "", err
	}
	if deactivated {
		return "", ErrDeactivated
	}
	return localpart, nil
}
