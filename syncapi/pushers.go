package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"

	"github.com/plexus-chat/plexus/pushrules"
	"github.com/plexus-chat/plexus/storage"
)

// Pushers (POST /pushers/set, GET /pushers) are kept here, beside the
// notifications they are for: the push gateway sender (pushgateway.go)
// reads both, with the unread counts a push carries. The client API
// validates them; this file only stores them.

const (
	sqlSelectPushers = `SELECT app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, device_id
		FROM syncapi_pushers WHERE user_id = $1 ORDER BY created_ts, app_id, pushkey`
	sqlCountPushers = `SELECT COUNT(*) FROM syncapi_pushers WHERE user_id = $1 AND NOT (app_id = $2 AND pushkey = $3)`
	// Without append, a pusher's app ID and pushkey belong to one user.
	sqlDeleteOthersPushers = `DELETE FROM syncapi_pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`
	sqlUpsertPusher        = `INSERT INTO syncapi_pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name,
		profile_tag, lang, data, device_id, created_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
		ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET kind = excluded.kind, app_display_name = excluded.app_display_name,
		device_display_name = excluded.device_display_name, profile_tag = excluded.profile_tag, lang = excluded.lang,
		data = excluded.data, device_id = excluded.device_id`
	sqlDeletePusher        = `DELETE FROM syncapi_pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`
	sqlDeleteDevicePushers = `DELETE FROM syncapi_pushers WHERE user_id = $1 AND device_id = $2`
	sqlDeletePushersExcept = `DELETE FROM syncapi_pushers WHERE user_id = $1 AND ($2 = '' OR device_id <> $2)`
)

// Pushers lists a user's pushers, oldest first.
func (s *SyncAPI) Pushers(ctx context.Context, userID string) ([]pushrules.Pusher, error) {
	rows, err := s.db.Reader().QueryContext(ctx, sqlSelectPushers, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []pushrules.Pusher{}
	for rows.Next() {
		p := pushrules.Pusher{UserID: userID}
		var data string
		if err := rows.Scan(&p.AppID, &p.PushKey, &p.Kind, &p.AppDisplayName, &p.DeviceDisplayName, &p.ProfileTag,
			&p.Lang, &data, &p.DeviceID); err != nil {
			return nil, err
		}
		p.Data = json.RawMessage(data)
		out = append(out, p)
	}
	return out, rows.Err()
}

// SetPusher adds or updates the user's pusher with its app ID and
// pushkey. Unless appendPusher, other users' pushers with the same app ID
// and pushkey are removed. pushrules.ErrTooManyPushers.
func (s *SyncAPI) SetPusher(ctx context.Context, p pushrules.Pusher, appendPusher bool) error {
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, sqlCountPushers, p.UserID, p.AppID, p.PushKey).Scan(&n); err != nil {
			return err
		}
		if n >= pushrules.MaxPushersPerUser {
			return pushrules.ErrTooManyPushers
		}
		if !appendPusher {
			if _, err := tx.ExecContext(ctx, sqlDeleteOthersPushers, p.AppID, p.PushKey, p.UserID); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, sqlUpsertPusher, p.UserID, p.AppID, p.PushKey, p.Kind, p.AppDisplayName,
			p.DeviceDisplayName, p.ProfileTag, p.Lang, string(p.Data), p.DeviceID, storage.NowMillis())
		return err
	})
}

// DeletePusher removes the user's pusher with an app ID and pushkey; one
// that does not exist is no error.
func (s *SyncAPI) DeletePusher(ctx context.Context, userID, appID, pushKey string) error {
	_, err := s.db.Writer().ExecContext(ctx, sqlDeletePusher, userID, appID, pushKey)
	return err
}

// DeleteDevicePushers removes the pushers the devices set: a device that
// is logged out or deleted gets no more pushes.
func (s *SyncAPI) DeleteDevicePushers(ctx context.Context, userID string, deviceIDs []string) error {
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		for _, id := range deviceIDs {
			if _, err := tx.ExecContext(ctx, sqlDeleteDevicePushers, userID, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// DeletePushersExcept removes the pushers of every device of the user but
// exceptDeviceID ("" for all of them).
func (s *SyncAPI) DeletePushersExcept(ctx context.Context, userID, exceptDeviceID string) error {
	_, err := s.db.Writer().ExecContext(ctx, sqlDeletePushersExcept, userID, exceptDeviceID)
	return err
}
