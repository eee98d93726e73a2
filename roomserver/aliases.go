package roomserver

import (
	"context"
	"database/sql"
	"errors"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// SetAlias points a local alias at a room.
func (r *Roomserver) SetAlias(ctx context.Context, alias, roomID, creator string) error {
	_, err := r.db.Writer().ExecContext(ctx,
		`INSERT INTO roomserver_aliases (alias, room_id, creator) VALUES ($1, $2, $3)`, alias, roomID, creator)
	if storage.IsUniqueViolation(err) {
		return api.ErrAliasInUse
	}
	return err
}

// ResolveAlias returns the room an alias points at, or "".
func (r *Roomserver) ResolveAlias(ctx context.Context, alias string) (string, error) {
	var roomID string
	err := r.db.Reader().QueryRowContext(ctx, `SELECT room_id FROM roomserver_aliases WHERE alias = $1`, alias).Scan(&roomID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return roomID, err
}

// AliasCreator returns the user who made an alias, or "".
func (r *Roomserver) AliasCreator(ctx context.Context, alias string) (string, error) {
	var creator string
	err := r.db.Reader().QueryRowContext(ctx, `SELECT creator FROM roomserver_aliases WHERE alias = $1`, alias).Scan(&creator)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return creator, err
}

// RemoveAlias deletes an alias.
func (r *Roomserver) RemoveAlias(ctx context.Context, alias string) error {
	res, err := r.db.Writer().ExecContext(ctx, `DELETE FROM roomserver_aliases WHERE alias = $1`, alias)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return api.ErrAliasNotFound
	}
	return nil
}

// RoomAliases lists a room's local aliases.
func (r *Roomserver) RoomAliases(ctx context.Context, roomID string) ([]string, error) {
	rows, err := r.db.Reader().QueryContext(ctx, `SELECT alias FROM roomserver_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	aliases := []string{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		aliases = append(aliases, a)
	}
	return aliases, rows.Err()
}
