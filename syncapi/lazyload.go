package syncapi

import (
	"context"
	"database/sql"
	"errors"
)

// lazySent tracks, for a lazy-loading device, which member events it has
// been sent per room: read in the sync's read transaction, recorded after
// it (a sync only reads).
type lazySent struct {
	userID, deviceID string
	resets           map[string]map[string]bool // room -> members: forget the rest
	added            map[string]map[string]bool // room -> members newly sent
}

func newLazySent(userID, deviceID string) *lazySent {
	return &lazySent{userID: userID, deviceID: deviceID, resets: map[string]map[string]bool{}, added: map[string]map[string]bool{}}
}

func (l *lazySent) sent(ctx context.Context, tx *sql.Tx, roomID, member string) (bool, error) {
	if l.added[roomID][member] {
		return true, nil
	}
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM syncapi_lazy_members
		WHERE user_id = $1 AND device_id = $2 AND room_id = $3 AND member = $4`, l.userID, l.deviceID, roomID, member).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (l *lazySent) add(roomID, member string) {
	if l.added[roomID] == nil {
		l.added[roomID] = map[string]bool{}
	}
	l.added[roomID][member] = true
}

// reset records that the device now has exactly these members of a room.
func (l *lazySent) reset(roomID string, members map[string]bool) {
	l.resets[roomID] = members
}

// save writes what this sync sent.
func (l *lazySent) save(ctx context.Context, s *SyncAPI) error {
	if len(l.resets) == 0 && len(l.added) == 0 {
		return nil
	}
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		for roomID, members := range l.resets {
			if _, err := tx.ExecContext(ctx, `DELETE FROM syncapi_lazy_members WHERE user_id = $1 AND device_id = $2 AND room_id = $3`,
				l.userID, l.deviceID, roomID); err != nil {
				return err
			}
			for m := range members {
				l.add(roomID, m)
			}
		}
		for roomID, members := range l.added {
			for m := range members {
				if _, err := tx.ExecContext(ctx, `INSERT INTO syncapi_lazy_members (user_id, device_id, room_id, member)
					VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, l.userID, l.deviceID, roomID, m); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
