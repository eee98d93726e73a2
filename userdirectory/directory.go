// Package userdirectory serves the user directory (POST
// /user_directory/search). It keeps, from the roomserver's output stream,
// who is joined to which room, each room's join rule and history
// visibility, and users' profiles from their join events (indexer.go), and
// shows a searcher the users who share a room with them or are joined to
// a public (or world-readable) room; with search_all_users, every local
// user too.
package userdirectory

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/streamconsumer"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// Limits of a search.
const (
	defaultLimit = 10
	maxLimit     = 50
)

// Roomserver is what the directory needs: the output stream, and state
// events that entered the current state without being in the stream.
type Roomserver interface {
	streamconsumer.Stream
	Event(ctx context.Context, eventID string) (*rsapi.Event, error)
}

// Accounts finds local users by profile, for search_all_users.
type Accounts interface {
	SearchProfiles(ctx context.Context, words []string, limit int) ([]accounts.LocalProfile, error)
}

// Options configure the directory.
type Options struct {
	// SearchAllUsers shows every local user, not only those visible
	// through rooms.
	SearchAllUsers bool
}

// Directory is the user directory component.
type Directory struct {
	db         *storage.DB
	rs         Roomserver
	accounts   Accounts
	serverName string
	opts       Options
	start      int64
}

// New opens the directory's tables. Start must be called to follow rooms.
func New(ctx context.Context, db *storage.DB, serverName string, rs Roomserver, accts Accounts, opts Options) (*Directory, error) {
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	d := &Directory{db: db, rs: rs, accounts: accts, serverName: serverName, opts: opts}
	err := db.Reader().QueryRowContext(ctx, sqlPosition, consumerName).Scan(&d.start)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	return d, nil
}

// Start follows the roomserver's output until ctx ends.
func (d *Directory) Start(ctx context.Context) {
	go streamconsumer.Run(ctx, d.rs, d.start, d.indexBatch, logrus.WithField("component", "userdirectory"), nil)
}

// AuthedHandler is a handler for a logged-in device.
type AuthedHandler = func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error

// Register adds POST /user_directory/search; authed wraps a handler with
// the client API's access token check and rate limit.
func (d *Directory) Register(root *mux.Router, authed func(AuthedHandler) http.Handler) {
	const prefix = "/_matrix/client/{apiVersion:(?:r0|v3)}"
	root.Handle(prefix+"/user_directory/search", authed(d.search)).Methods(http.MethodPost)
}

// Result is one user found.
type Result struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
	shared      bool   // shares a room with the searcher
}

func (d *Directory) search(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	var body struct {
		SearchTerm *string `json:"search_term"`
		Limit      *int    `json:"limit"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	if body.SearchTerm == nil {
		return httputil.BadJSON("search_term is required")
	}
	if len(*body.SearchTerm) > maxTermLength {
		return httputil.InvalidParam("search_term is longer than %d bytes", maxTermLength)
	}
	limit := defaultLimit
	if body.Limit != nil {
		if *body.Limit < 0 {
			return httputil.InvalidParam("limit must not be negative")
		}
		limit = min(*body.Limit, maxLimit)
	}
	results, limited, err := d.Search(r.Context(), "@"+sess.Localpart+":"+d.serverName, *body.SearchTerm, limit)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"results": results, "limited": limited})
	return nil
}

// Search returns up to limit users visible to the searcher whose words
// each term word begins: first those sharing a room with the searcher,
// then the rest, each by user ID. limited says more matched.
func (d *Directory) Search(ctx context.Context, searcher, term string, limit int) ([]Result, bool, error) {
	words := termWords(term)
	if len(words) == 0 {
		return []Result{}, false, nil
	}
	found, err := d.visibleMatches(ctx, searcher, words, limit+1)
	if err != nil {
		return nil, false, err
	}
	if d.opts.SearchAllUsers {
		local, err := d.accounts.SearchProfiles(ctx, words, limit+1)
		if err != nil {
			return nil, false, err
		}
		for _, p := range local {
			id := "@" + p.Localpart + ":" + d.serverName
			if !slices.ContainsFunc(found, func(r Result) bool { return r.UserID == id }) {
				found = append(found, Result{UserID: id, DisplayName: p.DisplayName, AvatarURL: p.AvatarURL})
			}
		}
		slices.SortStableFunc(found, func(a, b Result) int {
			if a.shared != b.shared {
				if a.shared {
					return -1
				}
				return 1
			}
			return strings.Compare(a.UserID, b.UserID)
		})
	}
	if len(found) > limit {
		return found[:limit], true, nil
	}
	if found == nil {
		found = []Result{}
	}
	return found, false, nil
}

// visibleMatches queries the users joined to a room the searcher is
// joined to, or to a public or world-readable room that one of our users
// is still in. Searchers do not share rooms with themselves: they find
// themselves only through public rooms, as other users would.
func (d *Directory) visibleMatches(ctx context.Context, searcher string, words []string, limit int) ([]Result, error) {
	var q strings.Builder
	q.WriteString(`SELECT p.user_id, p.display_name, p.avatar_url,
		EXISTS (SELECT 1 FROM userdirectory_members mine JOIN userdirectory_members theirs ON theirs.room_id = mine.room_id
			WHERE mine.user_id = $1 AND theirs.user_id = p.user_id AND theirs.user_id <> $1) AS shared
		FROM userdirectory_profiles p
		WHERE p.user_id IN (SELECT m.user_id FROM userdirectory_members m
			LEFT JOIN userdirectory_rooms r ON r.room_id = m.room_id
			WHERE ((r.join_rule = 'public' OR r.history_visibility = 'world_readable')
					AND EXISTS (SELECT 1 FROM userdirectory_members l WHERE l.room_id = m.room_id AND l.is_local))
				OR (m.user_id <> $1 AND m.room_id IN (SELECT room_id FROM userdirectory_members WHERE user_id = $1)))`)
	args := []any{searcher}
	for _, w := range words {
		args = append(args, w+"%")
		q.WriteString(" AND EXISTS (SELECT 1 FROM userdirectory_words w WHERE w.user_id = p.user_id AND w.word LIKE $" +
			strconv.Itoa(len(args)) + ")")
	}
	args = append(args, limit)
	q.WriteString(" ORDER BY shared DESC, p.user_id LIMIT $" + strconv.Itoa(len(args)))
	rows, err := d.db.Reader().QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Result
	for rows.Next() {
		var r Result
		if err := rows.Scan(&r.UserID, &r.DisplayName, &r.AvatarURL, &r.shared); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
