package api

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// The published room directory as /publicRooms pages it, for clients and
// for other servers alike: the request both forms carry, and the paging.
// Pages are cut from the directory's order (most joined members first,
// then room ID) by position keys, not offsets, so rooms joining or leaving
// the list between requests shift nothing: a token names a room's place in
// that order and whether the page starts there (next_batch) or ends just
// before it (prev_batch).

// Page sizes of /publicRooms.
const (
	DefaultPublicRoomsLimit = 100
	MaxPublicRoomsLimit     = 500
)

// Errors of PagePublicRooms, for the callers to answer as M_INVALID_PARAM.
var (
	ErrBadDirectoryToken = errors.New("invalid pagination token")
	ErrBadDirectoryLimit = errors.New("limit must not be negative")
)

// PublicRoomsRequest is what both forms of /publicRooms ask.
type PublicRoomsRequest struct {
	Limit  int    `json:"limit"`
	Since  string `json:"since"`
	Filter struct {
		GenericSearchTerm string `json:"generic_search_term"`
		// RoomTypes holds null for rooms without a type.
		RoomTypes []*string `json:"room_types"`
	} `json:"filter"`
	IncludeAllNetworks   bool   `json:"include_all_networks"`
	ThirdPartyInstanceID string `json:"third_party_instance_id"`
}

// RoomsFilter is the request's filter for PublicRooms.
func (r *PublicRoomsRequest) RoomsFilter() PublicRoomsFilter {
	f := PublicRoomsFilter{SearchTerm: r.Filter.GenericSearchTerm}
	for _, t := range r.Filter.RoomTypes {
		if t == nil {
			f.RoomTypes = append(f.RoomTypes, "")
		} else {
			f.RoomTypes = append(f.RoomTypes, *t)
		}
	}
	return f
}

// PublicRoomsPage is a /publicRooms answer.
type PublicRoomsPage struct {
	Chunk     []PublicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	Total     int          `json:"total_room_count_estimate"`
}

// PagePublicRooms cuts the page the request asks for from rooms, which are
// in the directory's order.
func PagePublicRooms(rooms []PublicRoom, since string, limit int) (PublicRoomsPage, error) {
	switch {
	case limit < 0:
		return PublicRoomsPage{}, ErrBadDirectoryLimit
	case limit == 0:
		limit = DefaultPublicRoomsLimit
	}
	limit = min(limit, MaxPublicRoomsLimit)
	start, end := 0, min(limit, len(rooms))
	var from directoryToken
	if since != "" {
		var ok bool
		if from, ok = parseDirectoryToken(since); !ok {
			return PublicRoomsPage{}, ErrBadDirectoryToken
		}
		pos := from.position(rooms)
		if from.forward {
			start, end = pos, min(pos+limit, len(rooms))
		} else {
			start, end = max(0, pos-limit), pos
		}
	}
	page := PublicRoomsPage{Chunk: rooms[start:end], Total: len(rooms)}
	if page.Chunk == nil {
		page.Chunk = []PublicRoom{}
	}
	if end < len(rooms) {
		page.NextBatch = directoryToken{forward: true, joined: rooms[end].NumJoinedMembers, roomID: rooms[end].RoomID}.String()
	}
	if start > 0 {
		prev := directoryToken{joined: from.joined, roomID: from.roomID}
		if start < len(rooms) {
			prev = directoryToken{joined: rooms[start].NumJoinedMembers, roomID: rooms[start].RoomID}
		}
		page.PrevBatch = prev.String()
	}
	return page, nil
}

// directoryToken is a place in the directory's order, and which way the
// page goes from it.
type directoryToken struct {
	forward bool
	joined  int
	roomID  string
}

// String encodes the token as "n" or "p", the member count, ":" and the
// room ID, in unpadded URL-safe base64 so that it is opaque and needs no
// escaping in a query string.
func (t directoryToken) String() string {
	dir := "p"
	if t.forward {
		dir = "n"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(dir + strconv.Itoa(t.joined) + ":" + t.roomID))
}

func parseDirectoryToken(s string) (directoryToken, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(raw) == 0 || (raw[0] != 'n' && raw[0] != 'p') {
		return directoryToken{}, false
	}
	count, roomID, ok := strings.Cut(string(raw[1:]), ":")
	n, err := strconv.Atoi(count)
	if !ok || err != nil || n < 0 || !strings.HasPrefix(roomID, "!") {
		return directoryToken{}, false
	}
	return directoryToken{forward: raw[0] == 'n', joined: n, roomID: roomID}, true
}

// position is how many rooms come before the token's place.
func (t directoryToken) position(rooms []PublicRoom) int {
	n := 0
	for _, p := range rooms {
		if p.NumJoinedMembers > t.joined || p.NumJoinedMembers == t.joined && p.RoomID < t.roomID {
			n++
		}
	}
	return n
}
