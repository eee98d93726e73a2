package accounts

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strconv"
)

func (a *Accounts) Profile(ctx context.Context, localpart string) (Profile, error) {
	var p Profile
	err := a.db.Reader().QueryRowContext(ctx, sqlSelectProfile, normalise(localpart)).
		Scan(&p.DisplayName, &p.AvatarURL)
	if errors.Is(err, sql.ErrNoRows) {
		return Profile{}, ErrNotFound
	}
	return p, err
}

// SetDisplayName and SetAvatarURL return ErrNotFound for missing and
// deactivated accounts: deactivation deletes the profile row.
func (a *Accounts) SetDisplayName(ctx context.Context, localpart, name string) error {
	res, err := a.db.Writer().ExecContext(ctx, sqlUpdateDisplayName, normalise(localpart), name)
	return mustAffect(res, err)
}

func (a *Accounts) SetAvatarURL(ctx context.Context, localpart, url string) error {
	res, err := a.db.Writer().ExecContext(ctx, sqlUpdateAvatarURL, normalise(localpart), url)
	return mustAffect(res, err)
}

func (a *Accounts) PutAccountData(ctx context.Context, localpart, roomID, dataType string, content json.RawMessage) (int64, error) {
	localpart = normalise(localpart)
	var pos int64
	err := a.db.WithTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, sqlCountUser, localpart).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return ErrNotFound
		}
		// Taking the next position locks the counter row until commit, so
		// positions become visible in increasing order.
		if err := tx.QueryRowContext(ctx, sqlNextAccountDataPos).Scan(&pos); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, sqlUpsertAccountData, localpart, roomID, dataType, string(content), pos)
		return err
	})
	if err != nil {
		return 0, err
	}
	return pos, nil
}

func (a *Accounts) AccountData(ctx context.Context, localpart, roomID, dataType string) (json.RawMessage, error) {
	var content string
	err := a.db.Reader().QueryRowContext(ctx, sqlSelectAccountData, normalise(localpart), roomID, dataType).Scan(&content)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(content), nil
}

func (a *Accounts) AccountDataSince(ctx context.Context, localpart string, since int64) ([]AccountDataEntry, int64, error) {
	// Read the stream position first and return only entries up to it: an
	// entry committed between the two queries is then left for the next
	// call instead of being skipped by a client that resumes from pos.
	var pos int64
	if err := a.db.Reader().QueryRowContext(ctx, sqlAccountDataPos).Scan(&pos); err != nil {
		return nil, 0, err
	}
	if pos <= since {
		return nil, pos, nil // nothing written since: most syncs
	}
	rows, err := a.db.Reader().QueryContext(ctx, sqlAccountDataSince, normalise(localpart), since, pos)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var entries []AccountDataEntry
	for rows.Next() {
		var e AccountDataEntry
		var content string
		if err := rows.Scan(&e.RoomID, &e.Type, &content, &e.StreamPos); err != nil {
			return nil, 0, err
		}
		e.Content = json.RawMessage(content)
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	return entries, pos, nil
}

func (a *Accounts) PutFilter(ctx context.Context, localpart string, filter json.RawMessage) (string, error) {
	localpart = normalise(localpart)
	var id string
	err := a.db.WithTx(ctx, func(tx *sql.Tx) error {
		// The per-user counter doubles as the existence check.
		var n int64
		err := tx.QueryRowContext(ctx, sqlNextFilterID, localpart).Scan(&n)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		id = strconv.FormatInt(n, 10)
		_, err = tx.ExecContext(ctx, sqlInsertFilter, localpart, id, string(filter))
		return err
	})
	if err != nil {
		return "", err
	}
	return id, nil
}

func (a *Accounts) Filter(ctx context.Context, localpart, filterID string) (json.RawMessage, error) {
	var filter string
	err := a.db.Reader().QueryRowContext(ctx, sqlSelectFilter, normalise(localpart), filterID).Scan(&filter)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(filter), nil
}
