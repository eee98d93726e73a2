package searchapi

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/plexus-chat/plexus/internal/eventfilter"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// roomBound is a room whose events a user may find: all of them up to
// maxPos, or all when maxPos is 0. The history visibility rules then
// decide per event (search.go); the bound only keeps the query, and the
// count, from looking past a user's departure.
type roomBound struct {
	roomID string
	maxPos int64
}

// roomScope lists the rooms a user has been in (joined or invited now,
// or left since, up to when they left, unless they forgot the room),
// narrowed by the filter's rooms.
func (s *SearchAPI) roomScope(ctx context.Context, userID string, f *eventfilter.RoomEventFilter) ([]roomBound, error) {
	memberships, err := s.rs.Memberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	forgotten, err := s.rs.ForgottenRooms(ctx, userID)
	if err != nil {
		return nil, err
	}
	var out []roomBound
	for _, m := range memberships {
		if slices.Contains(forgotten, m.RoomID) {
			continue
		}
		if f != nil && ((f.Rooms != nil && !slices.Contains(f.Rooms, m.RoomID)) || slices.Contains(f.NotRooms, m.RoomID)) {
			continue
		}
		switch m.Membership {
		case "join", "invite":
			out = append(out, roomBound{roomID: m.RoomID})
		case "leave", "ban":
			ev, err := s.rs.Event(ctx, m.EventID)
			if errors.Is(err, rsapi.ErrEventNotFound) || (err == nil && ev.Position == 0) {
				continue // an outlier leave (a rejected remote invite): never in the room
			}
			if err != nil {
				return nil, err
			}
			out = append(out, roomBound{roomID: m.RoomID, maxPos: ev.Position})
		}
	}
	return out, nil
}

// scopeSQL is the shared part of the WHERE clause: the keys and the rooms
// (with their bounds). Its placeholders start at $next.
func scopeSQL(keys []string, rooms []roomBound, next int) (string, []any) {
	var b strings.Builder
	var args []any
	b.WriteString(" AND d.search_key IN (" + storage.Placeholders(next, len(keys)) + ")")
	for _, k := range keys {
		args = append(args, k)
	}
	next += len(keys)
	var open []string
	var bounded []roomBound
	for _, r := range rooms {
		if r.maxPos == 0 {
			open = append(open, r.roomID)
		} else {
			bounded = append(bounded, r)
		}
	}
	b.WriteString(" AND (")
	first := true
	if len(open) > 0 {
		b.WriteString("d.room_id IN (" + storage.Placeholders(next, len(open)) + ")")
		for _, r := range open {
			args = append(args, r)
		}
		next += len(open)
		first = false
	}
	for _, r := range bounded {
		if !first {
			b.WriteString(" OR ")
		}
		first = false
		b.WriteString("(d.room_id = " + storage.Placeholders(next, 1) + " AND d.pos <= " + storage.Placeholders(next+1, 1) + ")")
		args = append(args, r.roomID, r.maxPos)
		next += 2
	}
	b.WriteString(")")
	return b.String(), args
}

// matchesSendersAndTypes applies the filter's senders and types (rooms are
// applied by roomScope). '*' in a type matches any run of characters.
func matchesSendersAndTypes(f *eventfilter.RoomEventFilter, sender, evType string) bool {
	if f == nil {
		return true
	}
	if slices.Contains(f.NotSenders, sender) || (f.Senders != nil && !slices.Contains(f.Senders, sender)) {
		return false
	}
	for _, p := range f.NotTypes {
		if globMatch(p, evType) {
			return false
		}
	}
	if f.Types == nil {
		return true
	}
	for _, p := range f.Types {
		if globMatch(p, evType) {
			return true
		}
	}
	return false
}

// globMatch matches s against a pattern in which '*' stands for any run
// of characters.
func globMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return strings.HasSuffix(s, parts[len(parts)-1])
}
