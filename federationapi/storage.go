package federationapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/storage"
)

// component is the name under which this package's migrations are recorded.
const component = "federationapi"

// migrations create the federation tables. Every statement runs unchanged
// on SQLite and PostgreSQL.
var migrations = []storage.Migration{
	{Version: 1, SQL: `
-- Other servers' signing keys, one row per key: the key ring's cache.
CREATE TABLE federationapi_server_keys (
	server_name TEXT NOT NULL,
	key_id TEXT NOT NULL,
	-- Unpadded base64 ed25519 public key.
	public_key TEXT NOT NULL,
	-- ms since the epoch until which the key may be used without asking
	-- again; 0 for an expired key.
	valid_until_ts BIGINT NOT NULL,
	-- ms since the epoch when the key stopped being used; 0 while current.
	expired_ts BIGINT NOT NULL,
	PRIMARY KEY (server_name, key_id)
);

-- The last /_matrix/key/v2/server response each server gave us directly,
-- verbatim with its signatures, which the notary endpoints serve again.
CREATE TABLE federationapi_server_key_responses (
	server_name TEXT PRIMARY KEY,
	valid_until_ts BIGINT NOT NULL,
	fetched_ts BIGINT NOT NULL,
	response TEXT NOT NULL
)`},
}

const (
	selectServerKeySQL = `SELECT public_key, valid_until_ts, expired_ts FROM federationapi_server_keys
WHERE server_name = $1 AND key_id = $2`

	// A key is only replaced by one valid for longer, or by news that it
	// expired: a stale answer (from a notary, say) never shortens it.
	upsertServerKeySQL = `INSERT INTO federationapi_server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (server_name, key_id) DO UPDATE SET
	public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts
WHERE excluded.expired_ts <> 0 OR excluded.valid_until_ts >= federationapi_server_keys.valid_until_ts`

	selectKeyResponseSQL = `SELECT valid_until_ts, fetched_ts, response FROM federationapi_server_key_responses
WHERE server_name = $1`

	upsertKeyResponseSQL = `INSERT INTO federationapi_server_key_responses (server_name, valid_until_ts, fetched_ts, response)
VALUES ($1, $2, $3, $4)
ON CONFLICT (server_name) DO UPDATE SET
	valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts, response = excluded.response`
)

// keyStore reads and writes the federation tables.
type keyStore struct{ db *storage.DB }

func (s keyStore) serverKey(ctx context.Context, req gomatrixserverlib.PublicKeyLookupRequest) (gomatrixserverlib.PublicKeyLookupResult, bool, error) {
	var (
		res gomatrixserverlib.PublicKeyLookupResult
		pub string
	)
	err := s.db.Reader().QueryRowContext(ctx, selectServerKeySQL, string(req.ServerName), string(req.KeyID)).
		Scan(&pub, &res.ValidUntilTS, &res.ExpiredTS)
	if errors.Is(err, sql.ErrNoRows) {
		return res, false, nil
	}
	if err != nil {
		return res, false, fmt.Errorf("read server key: %w", err)
	}
	if err := res.Key.Decode(pub); err != nil {
		// A row we wrote ourselves; treat corruption as a miss.
		return res, false, nil
	}
	return res, true, nil
}

func (s keyStore) storeServerKeys(ctx context.Context, results map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult) error {
	if len(results) == 0 {
		return nil
	}
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		for req, res := range results {
			if _, err := tx.ExecContext(ctx, upsertServerKeySQL, string(req.ServerName), string(req.KeyID),
				res.Key.Encode(), int64(res.ValidUntilTS), int64(res.ExpiredTS)); err != nil {
				return fmt.Errorf("store server key: %w", err)
			}
		}
		return nil
	})
}

// keyResponse is a server's own signed key response as we last fetched it.
type keyResponse struct {
	ValidUntil spec.Timestamp
	Fetched    spec.Timestamp
	Raw        []byte
}

func (s keyStore) keyResponse(ctx context.Context, server spec.ServerName) (*keyResponse, error) {
	var (
		r   keyResponse
		raw string
	)
	err := s.db.Reader().QueryRowContext(ctx, selectKeyResponseSQL, string(server)).Scan(&r.ValidUntil, &r.Fetched, &raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read key response: %w", err)
	}
	r.Raw = []byte(raw)
	return &r, nil
}

func (s keyStore) storeKeyResponse(ctx context.Context, server spec.ServerName, r keyResponse) error {
	_, err := s.db.Writer().ExecContext(ctx, upsertKeyResponseSQL, string(server), int64(r.ValidUntil), int64(r.Fetched), string(r.Raw))
	if err != nil {
		return fmt.Errorf("store key response: %w", err)
	}
	return nil
}
