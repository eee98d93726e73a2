// Package reports keeps the content reports users make (of events, rooms
// and users: POST /rooms/{roomId}/report[/{eventId}] and
// POST /users/{userId}/report) for the server's administrators, who list
// them through the admin API. It owns one table.
package reports

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"time"

	"github.com/plexus-chat/plexus/storage"
)

const component = "reports"

var migrations = []storage.Migration{
	{Version: 1, SQL: `
CREATE TABLE reports (
	report_id TEXT PRIMARY KEY,
	-- event, room or user
	kind TEXT NOT NULL,
	reporter TEXT NOT NULL,
	-- what was reported; '' where it does not apply
	room_id TEXT NOT NULL,
	event_id TEXT NOT NULL,
	user_id TEXT NOT NULL,
	reason TEXT NOT NULL,
	-- -100 (most offensive) to 0; NULL when not given
	score BIGINT,
	-- ms since the epoch
	received_ts BIGINT NOT NULL
);
CREATE INDEX reports_received ON reports (received_ts)`},
}

const (
	sqlInsert = `INSERT INTO reports (report_id, kind, reporter, room_id, event_id, user_id, reason, score, received_ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`
	sqlList = `SELECT report_id, kind, reporter, room_id, event_id, user_id, reason, score, received_ts
		FROM reports ORDER BY received_ts DESC, report_id LIMIT $1`
)

// Kinds of report.
const (
	KindEvent = "event"
	KindRoom  = "room"
	KindUser  = "user"
)

// Report is one report.
type Report struct {
	ID       string `json:"report_id"`
	Kind     string `json:"kind"`
	Reporter string `json:"reporter"`
	RoomID   string `json:"room_id,omitempty"`
	EventID  string `json:"event_id,omitempty"`
	UserID   string `json:"user_id,omitempty"`
	Reason   string `json:"reason"`
	Score    *int   `json:"score,omitempty"`
	// ReceivedTS is in milliseconds since the epoch.
	ReceivedTS int64 `json:"received_ts"`
}

// Store keeps reports.
type Store struct{ db *storage.DB }

// New runs the migrations and returns the store.
func New(ctx context.Context, db *storage.DB) (*Store, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

// Add stores a report; its ID and time are filled in.
func (s *Store) Add(ctx context.Context, r Report) error {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	r.ID = base64.RawURLEncoding.EncodeToString(b)
	r.ReceivedTS = time.Now().UnixMilli()
	var score sql.NullInt64
	if r.Score != nil {
		score = sql.NullInt64{Int64: int64(*r.Score), Valid: true}
	}
	_, err := s.db.Writer().ExecContext(ctx, sqlInsert, r.ID, r.Kind, r.Reporter, r.RoomID, r.EventID, r.UserID, r.Reason, score, r.ReceivedTS)
	return err
}

// List returns the newest reports, up to limit.
func (s *Store) List(ctx context.Context, limit int) ([]Report, error) {
	rows, err := s.db.Reader().QueryContext(ctx, sqlList, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Report{}
	for rows.Next() {
		var r Report
		var score sql.NullInt64
		if err := rows.Scan(&r.ID, &r.Kind, &r.Reporter, &r.RoomID, &r.EventID, &r.UserID, &r.Reason, &score, &r.ReceivedTS); err != nil {
			return nil, err
		}
		if score.Valid {
			v := int(score.Int64)
			r.Score = &v
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
