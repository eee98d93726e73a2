package api

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/tidwall/gjson"
)

// ---- Spaces and room summaries (roomserver/spaces.go): what the space
// hierarchy and room summary endpoints, for clients and for other servers,
// show of a room. ----

// RoomSummary is a room as the space hierarchy and the room summary
// endpoints show it: the spec's RoomSummary object (a public rooms chunk
// with room_type, allowed_room_ids, encryption and room_version). It
// marshals to that object; ChildrenState is kept apart because only some
// answers carry it.
type RoomSummary struct {
	// PublicRoom is the public rooms chunk the summary extends.
	PublicRoom
	RoomVersion    string   `json:"room_version,omitempty"`
	Encryption     string   `json:"encryption,omitempty"`
	AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`

	// ChildrenState are the room's valid m.space.child events (ValidChild).
	ChildrenState []SpaceChild `json:"-"`
}

// SpaceChild is an m.space.child event as a stripped state event with its
// origin_server_ts.
type SpaceChild struct {
	Type           string          `json:"type"`
	StateKey       string          `json:"state_key"`
	Sender         string          `json:"sender"`
	Content        json.RawMessage `json:"content"`
	OriginServerTS int64           `json:"origin_server_ts"`
}

// Via lists the servers of the child's via (nil when it has none).
func (c SpaceChild) Via() []string {
	var via []string
	list := gjson.GetBytes(c.Content, "via")
	if !list.IsArray() {
		return nil
	}
	for _, v := range list.Array() {
		if v.Type == gjson.String && v.String() != "" {
			via = append(via, v.String())
		}
	}
	return via
}

// Suggested reports the child's "suggested" flag.
func (c SpaceChild) Suggested() bool {
	return gjson.GetBytes(c.Content, "suggested").Type == gjson.True
}

// ValidChild reports whether an m.space.child event links a room: its
// state key is a room ID and its via a non-empty list of server names
// (a child without via has been removed from the space).
func (c SpaceChild) ValidChild() bool {
	return c.Type == "m.space.child" && strings.HasPrefix(c.StateKey, "!") && len(c.Via()) > 0
}

// order is the child's valid "order" key: at most 50 characters from
// \x20 to \x7E; ok false when it has none.
func (c SpaceChild) order() (string, bool) {
	o := gjson.GetBytes(c.Content, "order")
	if o.Type != gjson.String || len(o.String()) > 50 {
		return "", false
	}
	for _, ch := range o.String() {
		if ch < 0x20 || ch > 0x7e {
			return "", false
		}
	}
	return o.String(), true
}

// SortSpaceChildren puts children in the spec's order: those with a valid
// order key first, by it, then by origin_server_ts, then by room ID.
func SortSpaceChildren(children []SpaceChild) {
	slices.SortStableFunc(children, func(a, b SpaceChild) int {
		oa, hasA := a.order()
		ob, hasB := b.order()
		switch {
		case hasA && !hasB:
			return -1
		case hasB && !hasA:
			return 1
		case hasA && hasB && oa != ob:
			return strings.Compare(oa, ob)
		}
		if c := cmp.Compare(a.OriginServerTS, b.OriginServerTS); c != 0 {
			return c
		}
		return strings.Compare(a.StateKey, b.StateKey)
	})
}

// SpaceReader summarises rooms this server has the state of.
type SpaceReader interface {
	// RoomSummary summarises the room from its current state, with its
	// valid m.space.child events in the spec's order. ErrRoomNotFound when
	// the server does not have the room's state (unknown, or known only
	// from an invite).
	RoomSummary(ctx context.Context, roomID string) (*RoomSummary, error)
}
