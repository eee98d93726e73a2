package mediaapi

import (
	"context"
	"database/sql"
	"errors"

	"github.com/plexus-chat/plexus/storage"
)

// component is the name under which this package's migrations are recorded.
const component = "mediaapi"

// migrations create the media tables. A media row with an empty sha256 is
// a pending upload (POST /media/v1/create) that has no content yet.
var migrations = []storage.Migration{{
	Version: 1,
	SQL: `
CREATE TABLE mediaapi_media (
	server_name TEXT NOT NULL,
	media_id TEXT NOT NULL,
	-- the local user who uploaded or created it; '' for remote media
	uploader TEXT NOT NULL DEFAULT '',
	content_type TEXT NOT NULL DEFAULT '',
	upload_name TEXT NOT NULL DEFAULT '',
	size BIGINT NOT NULL DEFAULT 0,
	-- hex SHA-256 of the content, which names its file; '' while pending
	sha256 TEXT NOT NULL DEFAULT '',
	created_ts BIGINT NOT NULL,
	-- pending uploads only: when the unused ID expires (ms)
	expires_ts BIGINT NOT NULL DEFAULT 0,
	quarantined BOOLEAN NOT NULL DEFAULT FALSE,
	PRIMARY KEY (server_name, media_id)
);
CREATE INDEX mediaapi_media_uploader ON mediaapi_media (uploader, sha256, expires_ts);
CREATE INDEX mediaapi_media_sha256 ON mediaapi_media (sha256);

-- Thumbnails, one per source and configured size and method.
CREATE TABLE mediaapi_thumbnails (
	server_name TEXT NOT NULL,
	media_id TEXT NOT NULL,
	width INTEGER NOT NULL,
	height INTEGER NOT NULL,
	method TEXT NOT NULL,
	content_type TEXT NOT NULL,
	size BIGINT NOT NULL,
	sha256 TEXT NOT NULL,
	PRIMARY KEY (server_name, media_id, width, height, method)
);
CREATE INDEX mediaapi_thumbnails_sha256 ON mediaapi_thumbnails (sha256);
`,
}}

// Media is one row of mediaapi_media.
type Media struct {
	ServerName, MediaID string
	Uploader            string
	ContentType         string
	UploadName          string
	Size                int64
	SHA256              string
	CreatedTS           int64
	ExpiresTS           int64
	Quarantined         bool
}

// Pending reports whether the media was created but has no content yet.
func (m *Media) Pending() bool { return m.SHA256 == "" }

// Thumbnail is one row of mediaapi_thumbnails.
type Thumbnail struct {
	Width, Height int
	Method        string
	ContentType   string
	Size          int64
	SHA256        string
}

var errMediaExists = errors.New("mediaapi: media ID exists")

type store struct{ db *storage.DB }

const mediaColumns = `server_name, media_id, uploader, content_type, upload_name, size, sha256, created_ts, expires_ts, quarantined`

func scanMedia(row interface{ Scan(...any) error }) (*Media, error) {
	var m Media
	err := row.Scan(&m.ServerName, &m.MediaID, &m.Uploader, &m.ContentType, &m.UploadName, &m.Size, &m.SHA256, &m.CreatedTS, &m.ExpiresTS, &m.Quarantined)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &m, err
}

// media returns a media row, or nil when there is none.
func (s *store) media(ctx context.Context, server, id string) (*Media, error) {
	return scanMedia(s.db.Reader().QueryRowContext(ctx,
		`SELECT `+mediaColumns+` FROM mediaapi_media WHERE server_name = $1 AND media_id = $2`, server, id))
}

// insertMedia stores a new row; errMediaExists if the ID is taken.
func (s *store) insertMedia(ctx context.Context, m *Media) error {
	_, err := s.db.Writer().ExecContext(ctx, `INSERT INTO mediaapi_media (`+mediaColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		m.ServerName, m.MediaID, m.Uploader, m.ContentType, m.UploadName, m.Size, m.SHA256, m.CreatedTS, m.ExpiresTS, m.Quarantined)
	if storage.IsUniqueViolation(err) {
		return errMediaExists
	}
	return err
}

// upsertRemote records a fetched remote file (a later fetch of the same
// ID replaces a row whose file went missing).
func (s *store) upsertRemote(ctx context.Context, m *Media) error {
	_, err := s.db.Writer().ExecContext(ctx, `INSERT INTO mediaapi_media (`+mediaColumns+`)
		VALUES ($1, $2, '', $3, $4, $5, $6, $7, 0, FALSE)
		ON CONFLICT (server_name, media_id) DO UPDATE SET content_type = $3, upload_name = $4, size = $5, sha256 = $6`,
		m.ServerName, m.MediaID, m.ContentType, m.UploadName, m.Size, m.SHA256, m.CreatedTS)
	return err
}

// pendingCount counts a user's created IDs that have neither content nor
// expired.
func (s *store) pendingCount(ctx context.Context, uploader string, now int64) (int, error) {
	var n int
	err := s.db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM mediaapi_media
		WHERE uploader = $1 AND sha256 = '' AND expires_ts > $2`, uploader, now).Scan(&n)
	return n, err
}

// completePending gives a pending ID its content. It reports false when
// the row is no longer pending (a concurrent upload won).
func (s *store) completePending(ctx context.Context, server, id string, contentType, name string, size int64, sha string) (bool, error) {
	res, err := s.db.Writer().ExecContext(ctx, `UPDATE mediaapi_media
		SET content_type = $3, upload_name = $4, size = $5, sha256 = $6, expires_ts = 0
		WHERE server_name = $1 AND media_id = $2 AND sha256 = ''`, server, id, contentType, name, size, sha)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// deleteExpiredPending removes our pending IDs whose time ran out. (Rows
// of other servers' media without content hold only fetched thumbnails.)
func (s *store) deleteExpiredPending(ctx context.Context, server string, now int64) error {
	_, err := s.db.Writer().ExecContext(ctx, `DELETE FROM mediaapi_media
		WHERE server_name = $1 AND sha256 = '' AND expires_ts <= $2`, server, now)
	return err
}

// setQuarantined marks media as quarantined (or not); false if unknown.
func (s *store) setQuarantined(ctx context.Context, server, id string, q bool) (bool, error) {
	res, err := s.db.Writer().ExecContext(ctx, `UPDATE mediaapi_media SET quarantined = $3
		WHERE server_name = $1 AND media_id = $2`, server, id, q)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// deleteMedia removes a media row and its thumbnails, returning the
// content hashes that no row refers to any more (their files can go).
func (s *store) deleteMedia(ctx context.Context, server, id string) (found bool, orphans []string, err error) {
	err = s.db.WithTx(ctx, func(tx *sql.Tx) error {
		found, orphans = false, nil
		var hashes []string
		var sha string
		err := tx.QueryRowContext(ctx, `SELECT sha256 FROM mediaapi_media WHERE server_name = $1 AND media_id = $2`, server, id).Scan(&sha)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		if sha != "" {
			hashes = append(hashes, sha)
		}
		rows, err := tx.QueryContext(ctx, `SELECT sha256 FROM mediaapi_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id)
		if err != nil {
			return err
		}
		for rows.Next() {
			var h string
			if err := rows.Scan(&h); err != nil {
				rows.Close()
				return err
			}
			hashes = append(hashes, h)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM mediaapi_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM mediaapi_media WHERE server_name = $1 AND media_id = $2`, server, id); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, h := range hashes {
			if seen[h] {
				continue
			}
			seen[h] = true
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM mediaapi_media WHERE sha256 = $1)
				+ (SELECT COUNT(*) FROM mediaapi_thumbnails WHERE sha256 = $1)`, h).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				orphans = append(orphans, h)
			}
		}
		return nil
	})
	return found, orphans, err
}

// thumbnails lists the stored thumbnails of a media.
func (s *store) thumbnails(ctx context.Context, server, id string) ([]Thumbnail, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT width, height, method, content_type, size, sha256
		FROM mediaapi_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Thumbnail
	for rows.Next() {
		var t Thumbnail
		if err := rows.Scan(&t.Width, &t.Height, &t.Method, &t.ContentType, &t.Size, &t.SHA256); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// insertThumbnail records a thumbnail, unless its media has gone (deleted
// while the thumbnail was made); false then, or when it exists already.
func (s *store) insertThumbnail(ctx context.Context, server, id string, t Thumbnail) (bool, error) {
	res, err := s.db.Writer().ExecContext(ctx, `INSERT INTO mediaapi_thumbnails
		(server_name, media_id, width, height, method, content_type, size, sha256)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8
		WHERE EXISTS (SELECT 1 FROM mediaapi_media WHERE server_name = $1 AND media_id = $2)
		ON CONFLICT (server_name, media_id, width, height, method) DO NOTHING`,
		server, id, t.Width, t.Height, t.Method, t.ContentType, t.Size, t.SHA256)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// unreferenced reports whether no media or thumbnail uses a content hash.
func (s *store) unreferenced(ctx context.Context, sha string) (bool, error) {
	var n int
	err := s.db.Writer().QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM mediaapi_media WHERE sha256 = $1)
		+ (SELECT COUNT(*) FROM mediaapi_thumbnails WHERE sha256 = $1)`, sha).Scan(&n)
	return n == 0, err
}
