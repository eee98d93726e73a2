package syncapi

import (
	"path"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/eventfilter"
)

// matchesType reports whether an event type matches a filter pattern,
// where '*' matches any run of characters.
func matchesType(pattern, evType string) bool {
	if pattern == evType {
		return true
	}
	ok, err := path.Match(escapeForMatch(pattern), escapeForMatch(evType))
	return err == nil && ok
}

// escapeForMatch keeps path.Match's other metacharacters literal: only '*'
// is a wildcard in Matrix filters.
func escapeForMatch(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '?', '[', ']', '\\':
			out = append(out, '\\', c)
		case '/':
			out = append(out, 0) // path.Match treats '/' specially; map it away
		default:
			out = append(out, c)
		}
	}
	return string(out)
}

func matchesAnyType(patterns []string, evType string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return matchesType(p, evType) })
}

// matchesEventFilter applies an EventFilter's types and senders.
func matchesEventFilter(f *eventfilter.EventFilter, evType, sender string) bool {
	if f == nil {
		return true
	}
	if matchesAnyType(f.NotTypes, evType) {
		return false
	}
	if f.Types != nil && !matchesAnyType(f.Types, evType) {
		return false
	}
	if sender != "" {
		if slices.Contains(f.NotSenders, sender) {
			return false
		}
		if f.Senders != nil && !slices.Contains(f.Senders, sender) {
			return false
		}
	}
	return true
}

func matchesRooms(rooms, notRooms []string, roomID string) bool {
	if slices.Contains(notRooms, roomID) {
		return false
	}
	return rooms == nil || slices.Contains(rooms, roomID)
}

// matchesRoomEventFilter applies a RoomEventFilter to an event.
func matchesRoomEventFilter(f *eventfilter.RoomEventFilter, ev gomatrixserverlib.PDU) bool {
	if f == nil {
		return true
	}
	if !matchesEventFilter(&f.EventFilter, ev.Type(), string(ev.SenderID())) {
		return false
	}
	if !matchesRooms(f.Rooms, f.NotRooms, ev.RoomID().String()) {
		return false
	}
	if f.ContainsURL != nil {
		has := gjson.GetBytes(ev.Content(), "url").Exists()
		if has != *f.ContainsURL {
			return false
		}
	}
	return true
}
