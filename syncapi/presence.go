package syncapi

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	"github.com/plexus-chat/plexus/storage"
)

// Presence is one row per user in syncapi_presence: the state the user
// last set, their status message, when they were last active and last
// seen, and the position in the presence stream of the last change others
// can see. Idleness is computed when presence is read, with no sweeper:
// an online user inactive for idleAfter reads as unavailable, and a user
// not seen for offlineAfter as offline. Those computed changes make no
// stream entry, so a client learns of them only with the user's next
// change or by asking GET /presence; clients are told currently_active
// while online, which asks them not to expect last-active updates.

const (
	presenceOnline      = "online"
	presenceUnavailable = "unavailable"
	presenceOffline     = "offline"

	idleAfter    = 5 * time.Minute
	offlineAfter = 30 * time.Minute
	// presenceWriteInterval throttles the writes that only move the
	// last-active and last-seen times, which every /sync would make.
	presenceWriteInterval = time.Minute
	maxStatusMsgLength    = 1024
	maxPresencePerSync    = 100
)

const (
	sqlPresence       = `SELECT presence, status_msg, last_active_ts, last_seen_ts, pos FROM syncapi_presence WHERE user_id = $1`
	sqlUpsertPresence = `INSERT INTO syncapi_presence (user_id, presence, status_msg, last_active_ts, last_seen_ts, pos)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO UPDATE SET presence = excluded.presence,
		status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,
		last_seen_ts = excluded.last_seen_ts, pos = excluded.pos`
	// Users joined to a room that $1 is joined to.
	sqlSharesRoom = `SELECT 1 FROM syncapi_current_state mine
		JOIN syncapi_current_state theirs ON theirs.room_id = mine.room_id
		WHERE mine.type = 'm.room.member' AND mine.state_key = $1 AND mine.membership = 'join'
		AND theirs.type = 'm.room.member' AND theirs.state_key = $2 AND theirs.membership = 'join' LIMIT 1`
	sqlRoomPeers = `SELECT DISTINCT theirs.state_key FROM syncapi_current_state mine
		JOIN syncapi_current_state theirs ON theirs.room_id = mine.room_id
		WHERE mine.type = 'm.room.member' AND mine.state_key = $1 AND mine.membership = 'join'
		AND theirs.type = 'm.room.member' AND theirs.membership = 'join'`
	// Presence changes in ($2, $3] that $1 may see: their own and those of
	// users they share a room with.
	sqlPresenceChanges = `SELECT p.user_id, p.presence, p.status_msg, p.last_active_ts, p.last_seen_ts, p.pos
		FROM syncapi_presence p WHERE p.pos > $2 AND p.pos <= $3 AND (p.user_id = $1 OR EXISTS (
			SELECT 1 FROM syncapi_current_state mine
			JOIN syncapi_current_state theirs ON theirs.room_id = mine.room_id
			WHERE mine.type = 'm.room.member' AND mine.state_key = $1 AND mine.membership = 'join'
			AND theirs.type = 'm.room.member' AND theirs.state_key = p.user_id AND theirs.membership = 'join'))
		ORDER BY p.pos LIMIT $4`
)

// presenceState is a user's stored presence.
type presenceState struct {
	Presence     string // as last set: online, unavailable or offline
	StatusMsg    string
	LastActiveTS int64 // last pro-active use (online sync, PUT), ms; 0 for never
	LastSeenTS   int64 // last sync that was not offline, or PUT, ms
	Pos          int64
}

// effective is the presence others see at now (ms).
func (p presenceState) effective(now int64) string {
	switch {
	case p.Presence == "" || p.Presence == presenceOffline || now-p.LastSeenTS > offlineAfter.Milliseconds():
		return presenceOffline
	case p.Presence == presenceOnline && now-p.LastActiveTS > idleAfter.Milliseconds():
		return presenceUnavailable
	}
	return p.Presence
}

// content is the m.presence content, also the GET answer.
func (p presenceState) content(now int64) map[string]any {
	eff := p.effective(now)
	c := map[string]any{"presence": eff, "currently_active": eff == presenceOnline}
	if p.LastActiveTS > 0 {
		c["last_active_ago"] = max(0, now-p.LastActiveTS)
	}
	if p.StatusMsg != "" {
		c["status_msg"] = p.StatusMsg
	}
	return c
}

// presenceUpdate is something a user did that sets their presence.
type presenceUpdate struct {
	presence  string
	statusMsg *string // nil keeps the message
	active    bool    // a pro-active event: moves the last-active time
	explicit  bool    // PUT /presence: always stored
}

// apply returns the state after the update at now, whether it is worth
// writing, and whether others see a change (which takes a new position).
func (u presenceUpdate) apply(old presenceState, found bool, now int64) (next presenceState, write, changed bool) {
	next = old
	next.Presence = u.presence
	next.LastSeenTS = now
	if u.active {
		next.LastActiveTS = now
	}
	if u.statusMsg != nil {
		next.StatusMsg = *u.statusMsg
	}
	changed = !found || old.effective(now) != next.effective(now) || old.StatusMsg != next.StatusMsg
	interval := presenceWriteInterval.Milliseconds()
	write = changed || u.explicit || old.Presence != next.Presence ||
		now-old.LastSeenTS >= interval || (u.active && now-old.LastActiveTS >= interval)
	return next, write, changed
}

func loadPresence(ctx context.Context, q storage.Querier, userID string) (presenceState, bool, error) {
	var p presenceState
	var msg sql.NullString
	err := q.QueryRowContext(ctx, sqlPresence, userID).Scan(&p.Presence, &msg, &p.LastActiveTS, &p.LastSeenTS, &p.Pos)
	if errors.Is(err, sql.ErrNoRows) {
		return presenceState{}, false, nil
	}
	p.StatusMsg = msg.String
	return p, err == nil, err
}

// updatePresence applies an update and, when others see a change, gives
// it a new position and wakes everyone who shares a room with the user.
func (s *SyncAPI) updatePresence(ctx context.Context, userID string, u presenceUpdate) error {
	now := storage.NowMillis()
	// Most syncs change nothing: find that out without a write
	// transaction, and mostly without a read (the state last stored).
	old, found := s.localPresence.get(userID)
	if !found {
		var err error
		if old, found, err = loadPresence(ctx, s.db.Reader(), userID); err != nil {
			return err
		}
		if found {
			s.localPresence.set(userID, old)
		}
	}
	if _, write, _ := u.apply(old, found, now); !write {
		return nil
	}
	changed := false
	var stored presenceState
	err := s.db.WithTx(ctx, func(tx *sql.Tx) error {
		old, found, err := loadPresence(ctx, tx, userID)
		if err != nil {
			return err
		}
		stored = old
		next, write, ch := u.apply(old, found, now)
		if changed = ch; !write {
			return nil
		}
		stored = next
		if changed {
			if next.Pos, err = s.reservePositions(ctx, tx, streamPresence, 1); err != nil {
				return err
			}
		}
		var msg *string
		if next.StatusMsg != "" {
			msg = &next.StatusMsg
		}
		_, err = tx.ExecContext(ctx, sqlUpsertPresence, userID, next.Presence, msg, next.LastActiveTS, next.LastSeenTS, next.Pos)
		return err
	})
	if err != nil {
		return err
	}
	s.localPresence.set(userID, stored)
	if !changed {
		return nil
	}
	s.federatePresence(ctx, userID) // to servers sharing a room with the user (federation_edus.go)
	return s.wakeRoomPeers(ctx, userID)
}

// wakeRoomPeers wakes the user and everyone joined to one of their rooms.
func (s *SyncAPI) wakeRoomPeers(ctx context.Context, userID string) error {
	rows, err := s.db.Reader().QueryContext(ctx, sqlRoomPeers, userID)
	if err != nil {
		return err
	}
	defer rows.Close()
	s.notifier.wake(userID)
	for rows.Next() {
		var peer string
		if err := rows.Scan(&peer); err != nil {
			return err
		}
		if peer != userID {
			s.notifier.wake(peer)
		}
	}
	return rows.Err()
}

// presenceFromSync applies /sync's set_presence: online (the default)
// marks the user online and active, unavailable marks them idle, and
// offline leaves their presence alone.
func (s *SyncAPI) presenceFromSync(ctx context.Context, userID, setPresence string) error {
	switch setPresence {
	case presenceOffline:
		return nil
	case presenceUnavailable:
		return s.updatePresence(ctx, userID, presenceUpdate{presence: presenceUnavailable})
	default:
		return s.updatePresence(ctx, userID, presenceUpdate{presence: presenceOnline, active: true})
	}
}

// syncPresence adds the presence changes after since.Presence of the user
// and of those they share a room with.
func (s *SyncAPI) syncPresence(ctx context.Context, req *syncRequest, since Token, next *Token, resp *syncResponse) error {
	f := req.filter.Presence
	limit := maxPresencePerSync
	if f != nil && f.Limit > 0 {
		limit = min(f.Limit, limit)
	}
	if s.heads.presence.Load() <= since.Presence {
		return nil // nothing new; next.Presence stays where it was
	}
	now := storage.NowMillis()
	return s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		head, err := streamPosition(ctx, tx, streamPresence)
		if err != nil {
			return err
		}
		next.Presence = max(head, since.Presence)
		if head <= since.Presence || !matchesEventFilter(f, "m.presence", "") {
			return nil // nothing new, or presence switched off (not_types: ["*"])
		}
		rows, err := tx.QueryContext(ctx, sqlPresenceChanges, req.userID, since.Presence, head, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		n := 0
		var last int64
		for rows.Next() {
			var userID string
			var p presenceState
			var msg sql.NullString
			if err := rows.Scan(&userID, &p.Presence, &msg, &p.LastActiveTS, &p.LastSeenTS, &p.Pos); err != nil {
				return err
			}
			p.StatusMsg = msg.String
			n, last = n+1, p.Pos
			if matchesEventFilter(f, "m.presence", userID) {
				resp.Presence.Events = append(resp.Presence.Events, map[string]any{
					"type": "m.presence", "sender": userID, "content": p.content(now),
				})
			}
		}
		if n == limit {
			next.Presence = last // more to come: the next sync continues here
		}
		return rows.Err()
	})
}

func (s *SyncAPI) putPresence(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	userID := s.userID(sess.Localpart)
	if httputil.Vars(r)["userId"] != userID {
		return httputil.Forbidden("You cannot set the presence of another user")
	}
	var body struct {
		Presence  *string `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	if body.Presence == nil {
		return httputil.MissingParam("presence is required")
	}
	switch *body.Presence {
	case presenceOnline, presenceUnavailable, presenceOffline:
	default:
		return httputil.InvalidParam("presence must be online, unavailable or offline")
	}
	msg := ""
	if body.StatusMsg != nil {
		msg = *body.StatusMsg
	}
	if len(msg) > maxStatusMsgLength || !validText(msg) {
		return httputil.InvalidParam("status_msg must be text of at most %d bytes", maxStatusMsgLength)
	}
	err := s.updatePresence(r.Context(), userID, presenceUpdate{presence: *body.Presence, statusMsg: &msg, active: true, explicit: true})
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *SyncAPI) getPresence(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	ctx := r.Context()
	raw := httputil.Vars(r)["userId"]
	id, err := mxid.ParseUserID(raw)
	if err != nil {
		return httputil.InvalidParam("%q is not a user ID", raw)
	}
	me := s.userID(sess.Localpart)
	userID := id.String()
	if id.Server == s.serverName {
		acc, err := s.accounts.Account(ctx, id.Localpart)
		if errors.Is(err, accounts.ErrNotFound) {
			return httputil.NotFound("No such user")
		}
		if err != nil {
			return err
		}
		userID = s.userID(acc.Localpart)
	}
	if userID != me {
		var one int
		err := s.db.Reader().QueryRowContext(ctx, sqlSharesRoom, me, userID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return httputil.Forbidden("You are not allowed to see their presence")
		}
		if err != nil {
			return err
		}
	}
	p, _, err := loadPresence(ctx, s.db.Reader(), userID)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, p.content(storage.NowMillis()))
	return nil
}

// presenceCache keeps the presence last stored for each local user who
// synced, which only this process writes (updatePresence), so that a sync
// that changes nothing needs no read to find that out.
type presenceCache struct {
	mu    sync.Mutex
	users map[string]presenceState
}

func (c *presenceCache) get(userID string) (presenceState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.users[userID]
	return p, ok
}

func (c *presenceCache) set(userID string, p presenceState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.users == nil {
		c.users = map[string]presenceState{}
	}
	c.users[userID] = p
}
