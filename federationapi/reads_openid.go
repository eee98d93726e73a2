package federationapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/storage"
)

// OpenID: a local user asks the client API for a token
// (POST /_matrix/client/v3/user/{userId}/openid/request_token, in
// clientapi/openid.go) and hands it to a third party, which asks us who
// it belongs to (GET /_matrix/federation/v1/openid/userinfo). The tokens
// are good for nothing else. Only their SHA-256 is stored, like access
// tokens, so a database leak does not hand them out.

// openIDTokensSchema is migration 3 of this package (storage.go).
const openIDTokensSchema = `
CREATE TABLE federationapi_openid_tokens (
	-- hex SHA-256 of the token
	token_hash TEXT NOT NULL PRIMARY KEY,
	user_id TEXT NOT NULL,
	-- ms since the epoch
	expires_ts BIGINT NOT NULL
);
CREATE INDEX federationapi_openid_tokens_expiry ON federationapi_openid_tokens (expires_ts)`

const (
	sqlInsertOpenIDToken   = `INSERT INTO federationapi_openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)`
	sqlSelectOpenIDToken   = `SELECT user_id, expires_ts FROM federationapi_openid_tokens WHERE token_hash = $1`
	sqlDeleteExpiredOpenID = `DELETE FROM federationapi_openid_tokens WHERE expires_ts <= $1`
)

// OpenIDTokenLifetime is how long an OpenID token is valid.
const OpenIDTokenLifetime = time.Hour

// OpenIDTokens issues and checks OpenID tokens.
type OpenIDTokens struct {
	db  *storage.DB
	now func() time.Time
}

// OpenIDTokens is the OpenID token store, for the client API's
// request_token endpoint.
func (f *FederationAPI) OpenIDTokens() *OpenIDTokens {
	return &OpenIDTokens{db: f.store.db, now: time.Now}
}

func openIDTokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// IssueOpenIDToken makes a token for a local user and returns it with its
// lifetime. Expired tokens are deleted on the way.
func (o *OpenIDTokens) IssueOpenIDToken(ctx context.Context, userID string) (string, time.Duration, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", 0, err
	}
	token := base64.RawURLEncoding.EncodeToString(raw)
	now := o.now()
	err := o.db.WithTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, sqlDeleteExpiredOpenID, now.UnixMilli()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, sqlInsertOpenIDToken, openIDTokenHash(token), userID, now.Add(OpenIDTokenLifetime).UnixMilli())
		return err
	})
	if err != nil {
		return "", 0, fmt.Errorf("store OpenID token: %w", err)
	}
	return token, OpenIDTokenLifetime, nil
}

// OpenIDUser returns the user a valid token was issued to; ok is false
// for unknown and expired tokens.
func (o *OpenIDTokens) OpenIDUser(ctx context.Context, token string) (userID string, ok bool, err error) {
	var expires int64
	err = o.db.Reader().QueryRowContext(ctx, sqlSelectOpenIDToken, openIDTokenHash(token)).Scan(&userID, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if expires <= o.now().UnixMilli() {
		return "", false, nil
	}
	return userID, true, nil
}

var errUnknownOpenIDToken = &httputil.Error{Status: http.StatusUnauthorized, Code: "M_UNKNOWN_TOKEN", Message: "Unknown or expired OpenID token"}

// openIDUserInfo serves GET /_matrix/federation/v1/openid/userinfo
// ?access_token=, which needs no request signature: third parties that
// are not homeservers call it.
func (h *readsAPI) openIDUserInfo(w http.ResponseWriter, r *http.Request) error {
	token := r.URL.Query().Get("access_token")
	if token == "" {
		return httputil.MissingToken("access_token is required")
	}
	if len(token) > 256 {
		return errUnknownOpenIDToken
	}
	userID, ok, err := h.openID.OpenIDUser(r.Context(), token)
	if err != nil {
		return err
	}
	if !ok {
		return errUnknownOpenIDToken
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"sub": userID})
	return nil
}
