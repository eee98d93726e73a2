package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Finding rooms for the space hierarchy and room summaries: from the
// roomserver when this server has the room's state, else from the
// servers named in via, over federation (GET /hierarchy), and deciding
// whether a user may see them.

// RemoteSpaces asks other servers about spaces; the federation queries
// (RemoteQueries) implement it when federation is on.
type RemoteSpaces interface {
	// RemoteHierarchy returns a server's answer to
	// GET /_matrix/federation/v1/hierarchy/{roomId}.
	RemoteHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (json.RawMessage, error)
}

const (
	// remoteSpaceTimeout bounds one question to another server, so that a
	// dead via server does not hold the client for long.
	remoteSpaceTimeout = 10 * time.Second
	// maxViaTried is how many via servers are asked about one room.
	maxViaTried = 3
)

// summaryWithChildren is a summary as the hierarchy shows it, with
// children_state always present.
type summaryWithChildren struct {
	rsapi.RoomSummary
	ChildrenState []rsapi.SpaceChild `json:"children_state"`
}

// remoteRooms remembers, for one request, what other servers said about
// the children of the rooms they were asked about.
type remoteRooms struct {
	known        map[string]*rsapi.RoomSummary
	inaccessible map[string]bool
}

func newRemoteRooms() *remoteRooms {
	return &remoteRooms{known: map[string]*rsapi.RoomSummary{}, inaccessible: map[string]bool{}}
}

// findRoom summarises a room, nil when neither this server nor any via
// server can.
func (a *API) findRoom(ctx context.Context, roomID string, via []string, suggestedOnly bool, remote *remoteRooms) (*rsapi.RoomSummary, error) {
	s, err := a.rooms.RoomSummary(ctx, roomID)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, err
	}
	if remote.inaccessible[roomID] {
		return nil, nil
	}
	// A room a server described as another's child is enough, unless it
	// is a space whose children are wanted.
	if s := remote.known[roomID]; s != nil && s.RoomType != spec.MSpace {
		return s, nil
	}
	spaces, ok := a.queries.(RemoteSpaces)
	if !ok || a.queries == nil {
		return nil, nil
	}
	tried := 0
	for _, server := range via {
		if server == a.cfg.ServerName {
			continue
		}
		if tried++; tried > maxViaTried {
			break
		}
		callCtx, cancel := context.WithTimeout(ctx, remoteSpaceTimeout)
		data, err := spaces.RemoteHierarchy(callCtx, server, roomID, suggestedOnly)
		cancel()
		if err != nil {
			httputil.LoggerFromContext(ctx).WithError(err).WithField("server", server).Debug("remote hierarchy failed")
			continue
		}
		if s := parseRemoteHierarchy(data, roomID, remote); s != nil {
			return s, nil
		}
	}
	return nil, nil
}

// parseRemoteHierarchy reads another server's /hierarchy answer: the
// room, and what it says of the room's children for later.
func parseRemoteHierarchy(data json.RawMessage, roomID string, remote *remoteRooms) *rsapi.RoomSummary {
	var resp struct {
		Room         summaryWithChildren `json:"room"`
		Children     []rsapi.RoomSummary `json:"children"`
		Inaccessible []string            `json:"inaccessible_children"`
	}
	if err := json.Unmarshal(data, &resp); err != nil || resp.Room.RoomID != roomID {
		return nil
	}
	for i := range resp.Children {
		c := resp.Children[i]
		if c.RoomID != "" && c.RoomID != roomID {
			remote.known[c.RoomID] = &c
		}
	}
	for _, id := range resp.Inaccessible {
		remote.inaccessible[id] = true
	}
	room := resp.Room.RoomSummary
	for _, c := range resp.Room.ChildrenState {
		c.Type = "m.space.child"
		if c.ValidChild() {
			room.ChildrenState = append(room.ChildrenState, c)
		}
	}
	rsapi.SortSpaceChildren(room.ChildrenState)
	return &room
}

// userMaySee applies the spec's rules for the rooms a user may see in a
// hierarchy or summary: joined or invited; public, knockable or
// world_readable; restricted with the user in an allowed room (joined
// lists the user's joined rooms). Banned users see nothing. userID ""
// is an unauthenticated client, which sees only rooms anyone could.
func (a *API) userMaySee(ctx context.Context, s *rsapi.RoomSummary, userID string, joined map[string]bool) (membership string, ok bool, err error) {
	membership = spec.Leave
	if userID != "" {
		m, err := a.rooms.Membership(ctx, s.RoomID, userID)
		if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
			return "", false, err
		}
		if err == nil {
			membership = m.Membership
		}
	}
	switch membership {
	case spec.Join, spec.Invite:
		return membership, true, nil
	case spec.Ban:
		return membership, false, nil
	}
	if s.WorldReadable {
		return membership, true, nil
	}
	switch s.JoinRule {
	case spec.Public:
		return membership, true, nil
	case spec.Knock:
		return membership, versionAtLeast(s.RoomVersion, 7), nil
	case spec.KnockRestricted:
		return membership, versionAtLeast(s.RoomVersion, 10), nil
	case spec.Restricted:
		if userID != "" && versionAtLeast(s.RoomVersion, 8) {
			return membership, slices.ContainsFunc(s.AllowedRoomIDs, func(id string) bool { return joined[id] }), nil
		}
	}
	return membership, false, nil
}

// versionAtLeast reports whether a room version has the features of
// numbered version min; versions that are not numbers (unknown to us,
// from another server) are given the benefit of the doubt.
func versionAtLeast(version string, lowest int) bool {
	n, err := strconv.Atoi(version)
	return err != nil || n >= lowest
}

// joinedRoomSet is the set of rooms the user is joined to.
func (a *API) joinedRoomSet(ctx context.Context, userID string) (map[string]bool, error) {
	joined := map[string]bool{}
	if userID == "" {
		return joined, nil
	}
	ms, err := a.rooms.Memberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.Membership == spec.Join {
			joined[m.RoomID] = true
		}
	}
	return joined, nil
}

// roomIDServer is the server part of a room ID of versions 1 to 11, ""
// for the hash IDs of version 12.
func roomIDServer(roomID string) string {
	_, server, _ := strings.Cut(roomID, ":")
	return server
}
