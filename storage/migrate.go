package storage

import (
	"context"
	"database/sql"
	"fmt"
)

// Migration is one forward-only schema step of a component. Versions start
// at 1 and increase by one; a step, once released, is never edited: later
// changes are new steps.
type Migration struct {
	Version int
	// SQL runs in one transaction. Statements are separated by semicolons
	// and must be valid in both dialects, unless the dialect fields are set.
	SQL string
	// SQLiteSQL and PostgresSQL, when set, replace SQL for that dialect.
	SQLiteSQL, PostgresSQL string
}

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	component TEXT NOT NULL,
	version INTEGER NOT NULL,
	applied_ts BIGINT NOT NULL,
	PRIMARY KEY (component, version)
)`

// Migrate applies the migrations of component that the database has not yet
// seen, in order, each in its own transaction.
func (db *DB) Migrate(ctx context.Context, component string, migrations []Migration) error {
	if _, err := db.writer.ExecContext(ctx, createMigrationsTable); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var current int
	err := db.writer.QueryRowContext(ctx,
		"SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = $1", component).Scan(&current)
	if err != nil {
		return fmt.Errorf("read schema version of %s: %w", component, err)
	}
	for i, m := range migrations {
		if m.Version != i+1 {
			return fmt.Errorf("migrations of %s: step %d has version %d", component, i+1, m.Version)
		}
		if m.Version <= current {
			continue
		}
		text := m.SQL
		if db.Dialect == SQLite && m.SQLiteSQL != "" {
			text = m.SQLiteSQL
		}
		if db.Dialect == Postgres && m.PostgresSQL != "" {
			text = m.PostgresSQL
		}
		err := db.WithTx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, text); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx,
				"INSERT INTO schema_migrations (component, version, applied_ts) VALUES ($1, $2, $3)",
				component, m.Version, NowMillis())
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate %s to version %d: %w", component, m.Version, err)
		}
	}
	return nil
}
