// Package storagetest opens throwaway databases for tests: always a
// temporary SQLite file, and a fresh PostgreSQL schema as well when
// PLEXUS_TEST_POSTGRES holds a connection string.
package storagetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plexus-chat/plexus/storage"
)

// PostgresEnv names the variable holding the PostgreSQL connection string
// for tests.
const PostgresEnv = "PLEXUS_TEST_POSTGRES"

// Connections returns connection strings for every database the tests
// should run against, by name ("sqlite", and "postgres" when configured).
// PostgreSQL connections point at a new schema dropped when the test ends.
func Connections(t testing.TB) map[string]string {
	t.Helper()
	conns := map[string]string{
		"sqlite": filepath.Join(t.TempDir(), "plexus.db"),
	}
	if pg := os.Getenv(PostgresEnv); pg != "" {
		conns["postgres"] = NewPostgresSchema(t, pg)
	}
	return conns
}

// ForEach runs fn as a subtest against each database from Connections, open
// and closed for it.
func ForEach(t *testing.T, fn func(t *testing.T, db *storage.DB)) {
	for name, conn := range Connections(t) {
		t.Run(name, func(t *testing.T) {
			db, err := storage.Open(conn)
			if err != nil {
				t.Fatalf("open %s: %v", name, err)
			}
			t.Cleanup(func() { db.Close() })
			fn(t, db)
		})
	}
}

// NewPostgresSchema creates a uniquely named schema in the database that
// base names and returns a connection string whose search_path is that
// schema. The schema is dropped when the test ends.
func NewPostgresSchema(t testing.TB, base string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "plexus_test_" + hex.EncodeToString(b[:])
	admin, err := sql.Open("postgres", base)
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	if _, err := admin.ExecContext(context.Background(), "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		_, _ = admin.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	})
	return withSearchPath(t, base, schema)
}

func withSearchPath(t testing.TB, base, schema string) string {
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			t.Fatalf("parse %s: %v", PostgresEnv, err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return base + " search_path=" + schema
}
