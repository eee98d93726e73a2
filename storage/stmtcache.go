package storage

import (
	"context"
	"database/sql/driver"
	"errors"
	"strings"
)

// SQLite compiles every statement it runs, and compiling was about a fifth
// of the CPU of sends, syncs and /messages: each runs the same few dozen
// statements again and again. database/sql prepares a statement once per
// connection only when the caller holds a *sql.Stmt, which would mean
// threading prepared statements through every component. Instead the
// SQLite connections are wrapped: each keeps its prepared statements by
// SQL text and runs a query with the one it has. A statement is used by
// one query at a time; a second use while its rows are still open (a
// query run inside the loop over another with the same text) gets a
// statement of its own that is closed after it. Scripts of several
// statements (migrations) are never kept.

// maxCachedStmts bounds the statements kept per connection; past it the
// idle ones are closed and the cache starts over.
const maxCachedStmts = 512

// cachingConnector opens wrapped connections.
type cachingConnector struct {
	base driver.Connector
}

func (c cachingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return newCachingConn(conn)
}

func (c cachingConnector) Driver() driver.Driver { return c.base.Driver() }

// sqliteConn is what the wrapper needs of the driver's connection.
type sqliteConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
}

type cachingConn struct {
	sqliteConn
	stmts map[string]*cachedStmt
}

type cachedStmt struct {
	stmt  driver.Stmt
	inUse bool
}

func newCachingConn(c driver.Conn) (driver.Conn, error) {
	sc, ok := c.(sqliteConn)
	if !ok {
		c.Close()
		return nil, errors.New("storage: the SQLite driver's connection lacks the context interfaces")
	}
	return &cachingConn{sqliteConn: sc, stmts: map[string]*cachedStmt{}}, nil
}

// cacheable reports whether a query is one statement: no semicolon but at
// its end (string literals with semicolons are simply not cached).
func cacheable(query string) bool {
	q := strings.TrimRight(query, " \t\r\n;")
	return !strings.Contains(q, ";")
}

// take returns a statement for the query and a function to call when the
// caller is done with it.
func (c *cachingConn) take(ctx context.Context, query string) (driver.Stmt, func(), error) {
	if cs, ok := c.stmts[query]; ok && !cs.inUse {
		cs.inUse = true
		return cs.stmt, func() { cs.inUse = false }, nil
	}
	st, err := c.PrepareContext(ctx, query)
	if err != nil {
		return nil, nil, err
	}
	if _, busy := c.stmts[query]; busy {
		// The cached one is running: this one is for this use only.
		return st, func() { st.Close() }, nil
	}
	if len(c.stmts) >= maxCachedStmts {
		for q, cs := range c.stmts {
			if !cs.inUse {
				cs.stmt.Close()
				delete(c.stmts, q)
			}
		}
	}
	cs := &cachedStmt{stmt: st, inUse: true}
	c.stmts[query] = cs
	return st, func() { cs.inUse = false }, nil
}

func (c *cachingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if !cacheable(query) {
		return c.sqliteConn.ExecContext(ctx, query, args)
	}
	st, done, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	defer done()
	return st.(driver.StmtExecContext).ExecContext(ctx, args)
}

func (c *cachingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if !cacheable(query) {
		return c.sqliteConn.QueryContext(ctx, query, args)
	}
	st, done, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	rows, err := st.(driver.StmtQueryContext).QueryContext(ctx, args)
	if err != nil {
		done()
		return nil, err
	}
	return &releasingRows{Rows: rows, done: done}, nil
}

// Close closes the kept statements, then the connection.
func (c *cachingConn) Close() error {
	for q, cs := range c.stmts {
		cs.stmt.Close()
		delete(c.stmts, q)
	}
	return c.sqliteConn.Close()
}

// ResetSession and IsValid pass through when the driver has them, so that
// database/sql still checks connections it takes from its pool.
func (c *cachingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.sqliteConn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *cachingConn) IsValid() bool {
	if v, ok := c.sqliteConn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// Ping passes through, as database/sql pings through it.
func (c *cachingConn) Ping(ctx context.Context) error {
	if p, ok := c.sqliteConn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// Unwrap is the driver's connection, for the driver's own helpers.
func (c *cachingConn) Unwrap() driver.Conn { return c.sqliteConn }

// releasingRows gives its statement back when closed.
type releasingRows struct {
	driver.Rows
	done func()
}

func (r *releasingRows) Close() error {
	err := r.Rows.Close()
	if r.done != nil {
		r.done()
		r.done = nil
	}
	return err
}
