package federationapi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/storage"
)

// transactionsSchema is migration 2: the outbound queues, the sender's
// stream position and the answers to inbound transactions. {{ID}} is the
// dialect's auto-assigned key.
const transactionsSchema = `
-- Room events waiting to be sent, one row per destination. The event
-- itself is read from the roomserver when it is sent.
CREATE TABLE federationapi_queue_pdus (
	id {{ID}},
	destination TEXT NOT NULL,
	event_id TEXT NOT NULL,
	-- the transaction it was put in, resent as is until acknowledged; '' before
	txn_id TEXT NOT NULL DEFAULT '',
	created_ts BIGINT NOT NULL
);
CREATE INDEX federationapi_queue_pdus_dest ON federationapi_queue_pdus (destination, txn_id, id);
-- Ephemeral events (EDUs) waiting to be sent, one row per destination.
CREATE TABLE federationapi_queue_edus (
	id {{ID}},
	destination TEXT NOT NULL,
	edu_type TEXT NOT NULL,
	content TEXT NOT NULL,
	-- a newer EDU with the same non-empty key replaces this one while
	-- neither is in a transaction (a user's latest typing or presence)
	coalesce_key TEXT NOT NULL DEFAULT '',
	txn_id TEXT NOT NULL DEFAULT '',
	created_ts BIGINT NOT NULL,
	-- ms since the epoch after which it is not worth sending; 0 for never
	expires_ts BIGINT NOT NULL
);
CREATE INDEX federationapi_queue_edus_dest ON federationapi_queue_edus (destination, txn_id, id);
-- Each destination's transaction in flight and back-off.
CREATE TABLE federationapi_destinations (
	destination TEXT NOT NULL PRIMARY KEY,
	txn_id TEXT NOT NULL DEFAULT '',
	failures INTEGER NOT NULL DEFAULT 0,
	-- ms since the epoch before which no transaction is tried
	retry_ts BIGINT NOT NULL DEFAULT 0,
	-- ms since the epoch of the first failure in a row; 0 when up
	failing_since_ts BIGINT NOT NULL DEFAULT 0
);
-- How far the sender has read the roomserver's output stream.
CREATE TABLE federationapi_consumer (
	name TEXT NOT NULL PRIMARY KEY,
	pos BIGINT NOT NULL
);
-- Answers to recent inbound transactions, so that a retry gets the same
-- answer without being processed again.
CREATE TABLE federationapi_inbound_txns (
	origin TEXT NOT NULL,
	txn_id TEXT NOT NULL,
	response TEXT NOT NULL,
	received_ts BIGINT NOT NULL,
	PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federationapi_inbound_txns_ts ON federationapi_inbound_txns (received_ts)`

const (
	sqlSenderPos    = `SELECT pos FROM federationapi_consumer WHERE name = $1`
	sqlSetSenderPos = `INSERT INTO federationapi_consumer (name, pos) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET pos = excluded.pos`

	sqlQueuePDU = `INSERT INTO federationapi_queue_pdus (destination, event_id, created_ts) VALUES ($1, $2, $3)`
	sqlQueueEDU = `INSERT INTO federationapi_queue_edus (destination, edu_type, content, coalesce_key, created_ts, expires_ts)
		VALUES ($1, $2, $3, $4, $5, $6)`
	sqlCoalesceEDU = `DELETE FROM federationapi_queue_edus WHERE destination = $1 AND coalesce_key = $2 AND txn_id = ''`

	sqlPendingDestinations = `SELECT destination FROM federationapi_queue_pdus
		UNION SELECT destination FROM federationapi_queue_edus`
	sqlDestination = `SELECT txn_id, failures, retry_ts, failing_since_ts FROM federationapi_destinations WHERE destination = $1`
	sqlSetTxn      = `INSERT INTO federationapi_destinations (destination, txn_id) VALUES ($1, $2)
		ON CONFLICT (destination) DO UPDATE SET txn_id = excluded.txn_id`
	sqlSetBackoff = `INSERT INTO federationapi_destinations (destination, failures, retry_ts, failing_since_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (destination) DO UPDATE SET failures = excluded.failures, retry_ts = excluded.retry_ts,
		failing_since_ts = excluded.failing_since_ts`

	// Rows not worth keeping: too old (the destination was down too long)
	// or, for EDUs, expired.
	sqlDropOldPDUs = `DELETE FROM federationapi_queue_pdus WHERE destination = $1 AND created_ts < $2`
	sqlDropOldEDUs = `DELETE FROM federationapi_queue_edus WHERE destination = $1
		AND (created_ts < $2 OR (expires_ts > 0 AND expires_ts < $3))`

	sqlFreePDUs = `SELECT id FROM federationapi_queue_pdus WHERE destination = $1 AND txn_id = '' ORDER BY id LIMIT $2`
	sqlFreeEDUs = `SELECT id, LENGTH(content) FROM federationapi_queue_edus WHERE destination = $1 AND txn_id = '' ORDER BY id LIMIT $2`
	sqlTxnPDUs  = `SELECT event_id FROM federationapi_queue_pdus WHERE destination = $1 AND txn_id = $2 ORDER BY id`
	sqlTxnEDUs  = `SELECT edu_type, content FROM federationapi_queue_edus WHERE destination = $1 AND txn_id = $2 ORDER BY id`
	sqlAckPDUs  = `DELETE FROM federationapi_queue_pdus WHERE destination = $1 AND txn_id = $2`
	sqlAckEDUs  = `DELETE FROM federationapi_queue_edus WHERE destination = $1 AND txn_id = $2`
)

// senderStore reads and writes the outbound queues.
type senderStore struct{ db *storage.DB }

// queuedEDU is one EDU to queue for some destinations.
type queuedEDU struct {
	Type    string
	Content []byte
	// CoalesceKey, when set, replaces an older EDU of the same key that
	// has not been put in a transaction yet.
	CoalesceKey string
	// Expires is when it is no longer worth sending; zero for never.
	Expires time.Time
}

func (s senderStore) position(ctx context.Context, name string) (int64, bool, error) {
	var pos int64
	err := s.db.Reader().QueryRowContext(ctx, sqlSenderPos, name).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return pos, err == nil, err
}

// queuePDUs queues events for destinations and, when pos > 0, moves the
// stream position in the same transaction, so an event is queued once.
func (s senderStore) queuePDUs(ctx context.Context, events map[spec.ServerName][]string, consumer string, pos int64) error {
	now := storage.NowMillis()
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		for dest, ids := range events {
			for _, id := range ids {
				if _, err := tx.ExecContext(ctx, sqlQueuePDU, string(dest), id, now); err != nil {
					return fmt.Errorf("queue event: %w", err)
				}
			}
		}
		if pos > 0 {
			if _, err := tx.ExecContext(ctx, sqlSetSenderPos, consumer, pos); err != nil {
				return fmt.Errorf("store sender position: %w", err)
			}
		}
		return nil
	})
}

func (s senderStore) setPosition(ctx context.Context, consumer string, pos int64) error {
	_, err := s.db.Writer().ExecContext(ctx, sqlSetSenderPos, consumer, pos)
	return err
}

func (s senderStore) queueEDU(ctx context.Context, dests []spec.ServerName, edu queuedEDU) error {
	now := storage.NowMillis()
	var expires int64
	if !edu.Expires.IsZero() {
		expires = edu.Expires.UnixMilli()
	}
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		for _, dest := range dests {
			if edu.CoalesceKey != "" {
				if _, err := tx.ExecContext(ctx, sqlCoalesceEDU, string(dest), edu.CoalesceKey); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, sqlQueueEDU, string(dest), edu.Type, string(edu.Content), edu.CoalesceKey, now, expires); err != nil {
				return fmt.Errorf("queue EDU: %w", err)
			}
		}
		return nil
	})
}

func (s senderStore) pendingDestinations(ctx context.Context) ([]spec.ServerName, error) {
	rows, err := s.db.Reader().QueryContext(ctx, sqlPendingDestinations)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []spec.ServerName
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, spec.ServerName(d))
	}
	return out, rows.Err()
}

// destState is a destination's row.
type destState struct {
	txnID        string
	failures     int
	retryAt      time.Time
	failingSince time.Time
}

func (s senderStore) destination(ctx context.Context, dest spec.ServerName) (destState, error) {
	var st destState
	var retry, since int64
	err := s.db.Reader().QueryRowContext(ctx, sqlDestination, string(dest)).Scan(&st.txnID, &st.failures, &retry, &since)
	if errors.Is(err, sql.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.retryAt, st.failingSince = msTime(retry), msTime(since)
	return st, nil
}

func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func timeMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func (s senderStore) setBackoff(ctx context.Context, dest spec.ServerName, failures int, retryAt, failingSince time.Time) error {
	_, err := s.db.Writer().ExecContext(ctx, sqlSetBackoff, string(dest), failures, timeMS(retryAt), timeMS(failingSince))
	return err
}

// dropStale deletes what is too old to send and returns how many PDUs
// and EDUs went.
func (s senderStore) dropStale(ctx context.Context, dest spec.ServerName, olderThan, now time.Time) (pdus, edus int64, err error) {
	err = s.db.WithTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, sqlDropOldPDUs, string(dest), olderThan.UnixMilli())
		if err != nil {
			return err
		}
		if pdus, err = res.RowsAffected(); err != nil {
			return err
		}
		res, err = tx.ExecContext(ctx, sqlDropOldEDUs, string(dest), olderThan.UnixMilli(), now.UnixMilli())
		if err != nil {
			return err
		}
		edus, err = res.RowsAffected()
		return err
	})
	return pdus, edus, err
}

// claim puts the oldest unsent rows of a destination (at most maxPDUs and
// maxEDUs, and EDUs of at most maxEDUBytes unless only one) in a new
// transaction and records it as the destination's transaction in flight.
// It returns false when there was nothing to send.
func (s senderStore) claim(ctx context.Context, dest spec.ServerName, txnID string, maxPDUs, maxEDUs, maxEDUBytes int) (bool, error) {
	claimed := false
	err := s.db.WithTx(ctx, func(tx *sql.Tx) error {
		claimed = false
		pdus, err := queryIDs(ctx, tx, sqlFreePDUs, string(dest), maxPDUs)
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, sqlFreeEDUs, string(dest), maxEDUs)
		if err != nil {
			return err
		}
		var edus []any
		size := 0
		for rows.Next() {
			var id int64
			var n int
			if err := rows.Scan(&id, &n); err != nil {
				rows.Close()
				return err
			}
			if size += n; size > maxEDUBytes && len(edus) > 0 {
				break
			}
			edus = append(edus, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(pdus) == 0 && len(edus) == 0 {
			return nil
		}
		for table, ids := range map[string][]any{"federationapi_queue_pdus": pdus, "federationapi_queue_edus": edus} {
			if len(ids) == 0 {
				continue
			}
			args := append([]any{txnID}, ids...)
			q := `UPDATE ` + table + ` SET txn_id = $1 WHERE id IN (` + storage.Placeholders(2, len(ids)) + `)`
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, sqlSetTxn, string(dest), txnID); err != nil {
			return err
		}
		claimed = true
		return nil
	})
	return claimed, err
}

func queryIDs(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]any, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []any
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// txnContents returns the event IDs and EDUs of a transaction in flight.
func (s senderStore) txnContents(ctx context.Context, dest spec.ServerName, txnID string) (eventIDs []string, edus []queuedEDU, err error) {
	err = s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, sqlTxnPDUs, string(dest), txnID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			eventIDs = append(eventIDs, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.QueryContext(ctx, sqlTxnEDUs, string(dest), txnID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e queuedEDU
			var content string
			if err := rows.Scan(&e.Type, &content); err != nil {
				return err
			}
			e.Content = []byte(content)
			edus = append(edus, e)
		}
		return rows.Err()
	})
	return eventIDs, edus, err
}

// ack deletes an acknowledged (or abandoned) transaction's rows and
// clears it as the destination's transaction in flight.
func (s senderStore) ack(ctx context.Context, dest spec.ServerName, txnID string) error {
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, sqlAckPDUs, string(dest), txnID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, sqlAckEDUs, string(dest), txnID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, sqlSetTxn, string(dest), "")
		return err
	})
}
