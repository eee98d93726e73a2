// Package storage opens the database (SQLite or PostgreSQL), runs each
// component's migrations and runs transactions with retries. Components own
// their tables; this package owns only the plumbing they share.
package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect names the SQL dialect of a database.
type Dialect int

const (
	SQLite Dialect = iota
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// DB is an open database. For SQLite it holds two pools: a single writer
// connection (SQLite allows one writer at a time, and queuing in Go is
// cheaper and fairer than spinning on SQLITE_BUSY) and a pool of read-only
// connections that run in parallel thanks to WAL. For PostgreSQL both are the
// same pool.
type DB struct {
	Dialect Dialect
	writer  *sql.DB
	reader  *sql.DB
}

// IsPostgresURL reports whether a database setting names PostgreSQL.
func IsPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// Open opens the database that conn names: a postgres:// URL, or else a
// path to an SQLite file (its folder is created if missing).
func Open(conn string) (*DB, error) {
	if IsPostgresURL(conn) {
		return openPostgres(conn)
	}
	return openSQLite(conn)
}

func openPostgres(conn string) (*DB, error) {
	db, err := sql.Open("postgres", conn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(8)
	db.SetConnMaxIdleTime(5 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return &DB{Dialect: Postgres, writer: db, reader: db}, nil
}

func openSQLite(path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("empty SQLite path")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create database folder: %w", err)
		}
	}
	pragmas := "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(ON)"
	base := "file:" + (&url.URL{Path: path}).EscapedPath()
	writer, err := openSQLitePool(base + "?" + pragmas + "&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetConnMaxIdleTime(0)
	// Create the file and switch it to WAL before readers open it.
	if err := writer.Ping(); err != nil {
		writer.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	reader, err := openSQLitePool(base + "?" + pragmas + "&_pragma=query_only(ON)")
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	readers := max(4, runtime.NumCPU()*2)
	reader.SetMaxOpenConns(readers)
	// Keep every reader open: database/sql keeps only two idle by default
	// and would close the others after each burst, losing their prepared
	// statements (stmtcache.go) and paying for a new connection each time.
	reader.SetMaxIdleConns(readers)
	return &DB{Dialect: SQLite, writer: writer, reader: reader}, nil
}

// openSQLitePool opens an SQLite pool whose connections keep their prepared
// statements (stmtcache.go).
func openSQLitePool(dsn string) (*sql.DB, error) {
	base, err := sqlite.NewConnector(dsn)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(cachingConnector{base: base}), nil
}

// Close closes every connection.
func (db *DB) Close() error {
	err := db.writer.Close()
	if db.reader != db.writer {
		if rerr := db.reader.Close(); err == nil {
			err = rerr
		}
	}
	return err
}

// Querier is what both *sql.DB and *sql.Tx offer; statements that may run
// in or out of a transaction take one.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Reader returns the pool for read-only queries outside transactions.
func (db *DB) Reader() Querier { return db.reader }

// Writer returns the pool for single writes outside transactions.
func (db *DB) Writer() Querier { return db.writer }

// ErrNoRows is sql.ErrNoRows, re-exported so components need not import
// database/sql only to compare it.
var ErrNoRows = sql.ErrNoRows

// WithTx runs fn in a read-write transaction and commits it. When the
// database reports a transient conflict (SQLite busy, PostgreSQL
// serialization failure or deadlock) the whole function is retried, so fn
// must not have side effects outside the transaction.
func (db *DB) WithTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	const attempts = 5
	var err error
	for i := 0; i < attempts; i++ {
		err = db.runTx(ctx, fn)
		if err == nil || !IsRetryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(i+1) * 20 * time.Millisecond):
		}
	}
	return err
}

func (db *DB) runTx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	tx, err := db.writer.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			panic(p)
		}
	}()
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// IsRetryable reports whether err is a transient conflict worth retrying.
func IsRetryable(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
	}
	var pe *pq.Error
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return true
		}
	}
	return false
}

// IsUniqueViolation reports whether err is a unique or primary key conflict.
func IsUniqueViolation(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	var pe *pq.Error
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	return false
}

// ReadTx runs fn in a read-only transaction on the read pool, so that
// every query in it sees the same snapshot of the database.
func (db *DB) ReadTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	opts := &sql.TxOptions{ReadOnly: true}
	if db.Dialect == Postgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := db.reader.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// Placeholders returns "$start, $start+1, ..." for n values, for IN lists.
func Placeholders(start, n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("$" + strconv.Itoa(start+i))
	}
	return b.String()
}
