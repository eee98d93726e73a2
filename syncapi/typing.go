package syncapi

import (
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

const (
	// maxTypingTimeout caps how long one request marks a user as typing;
	// clients repeat the request every 20 to 30 seconds while typing.
	maxTypingTimeout     = 2 * time.Minute
	defaultTypingTimeout = 30 * time.Second
)

// typingState is who is typing in which room, kept in memory only. Its
// position (Token.Typing) counts from the time it was created in
// milliseconds and moves to at least the current time at each change, so
// tokens from before a restart stay behind the new positions.
type typingState struct {
	mu    sync.Mutex
	pos   int64
	rooms map[string]*roomTyping
	// wake wakes the syncs of a room's joined members; called without mu.
	wake func(roomID string)
}

type roomTyping struct {
	users map[string]time.Time // user ID → when their typing expires
	pos   int64                // position of the room's last change
	timer *time.Timer          // fires at the earliest expiry
}

func newTypingState(wake func(roomID string)) *typingState {
	return &typingState{pos: time.Now().UnixMilli(), rooms: map[string]*roomTyping{}, wake: wake}
}

// nextPos hands out a new position; mu must be held.
func (t *typingState) nextPos() int64 {
	t.pos = max(t.pos+1, time.Now().UnixMilli())
	return t.pos
}

// set marks a user as typing for timeout, or as not typing, and wakes the
// room's members when the list of typing users changed.
func (t *typingState) set(roomID, userID string, typing bool, timeout time.Duration) {
	t.mu.Lock()
	r := t.rooms[roomID]
	if r == nil {
		r = &roomTyping{users: map[string]time.Time{}}
		t.rooms[roomID] = r
	}
	_, was := r.users[userID]
	if typing {
		r.users[userID] = time.Now().Add(timeout)
	} else {
		delete(r.users, userID)
	}
	changed := was != typing
	if changed {
		r.pos = t.nextPos()
	}
	t.schedule(roomID, r)
	t.mu.Unlock()
	if changed {
		t.wake(roomID)
	}
}

// schedule sets the room's timer to its earliest expiry; mu must be held.
func (t *typingState) schedule(roomID string, r *roomTyping) {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	var earliest time.Time
	for _, e := range r.users {
		if earliest.IsZero() || e.Before(earliest) {
			earliest = e
		}
	}
	if !earliest.IsZero() {
		r.timer = time.AfterFunc(time.Until(earliest), func() { t.expire(roomID) })
	}
}

// expire drops the users whose typing ran out. A stale timer finds
// nothing to drop and only reschedules.
func (t *typingState) expire(roomID string) {
	t.mu.Lock()
	r := t.rooms[roomID]
	if r == nil {
		t.mu.Unlock()
		return
	}
	now := time.Now()
	changed := false
	for u, e := range r.users {
		if !e.After(now) {
			delete(r.users, u)
			changed = true
		}
	}
	if changed {
		r.pos = t.nextPos()
	}
	t.schedule(roomID, r)
	t.mu.Unlock()
	if changed {
		t.wake(roomID)
	}
}

// changes returns the sorted typing users of the rooms (among those given)
// whose typing changed after position since, and the current position.
// An initial sync gets only the rooms where someone is typing. Rooms
// whose typing stopped keep their entry (a position and no users), so
// that a client that saw someone start also learns that they stopped.
func (t *typingState) changes(since int64, initial bool, rooms map[string]bool) (map[string][]string, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string][]string{}
	for roomID, r := range t.rooms {
		if !rooms[roomID] || (initial && len(r.users) == 0) || (!initial && r.pos <= since) {
			continue
		}
		users := make([]string, 0, len(r.users))
		for u := range r.users {
			users = append(users, u)
		}
		slices.Sort(users)
		out[roomID] = users
	}
	return out, t.pos
}

// setTyping is PUT /rooms/{roomId}/typing/{userId}.
func (s *SyncAPI) setTyping(w http.ResponseWriter, r *http.Request, sess *accounts.Session) error {
	vars := httputil.Vars(r)
	roomID, userID := vars["roomId"], vars["userId"]
	self := s.userID(sess.Localpart)
	if userID != self {
		return httputil.Forbidden("You may only set your own typing state")
	}
	var body struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	if body.Typing == nil {
		return httputil.BadJSON("typing is required")
	}
	timeout := defaultTypingTimeout
	if body.Timeout != nil {
		if *body.Timeout < 0 {
			return httputil.InvalidParam("timeout must not be negative")
		}
		if *body.Timeout > 0 {
			timeout = time.Duration(min(*body.Timeout, maxTypingTimeout.Milliseconds())) * time.Millisecond
		}
	}
	if err := s.requireJoined(r.Context(), roomID, self); err != nil {
		return err
	}
	s.typing.set(roomID, self, *body.Typing, timeout)
	s.federateTyping(r.Context(), roomID, self, *body.Typing) // to other servers in the room (federation_edus.go)
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}
