package federationapi

import (
	"context"
	"errors"
	"net/http"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// GET /_matrix/federation/v1/hierarchy/{roomId}: one level of a space for
// another server, which walks further itself and filters for its user.
// The room and the children its server could peek or join are summarised;
// children this server knows but the other cannot reach are listed as
// inaccessible; children this server does not know are left out.

// maxHierarchyChildren bounds the work of one request.
const maxHierarchyChildren = 500

// HierarchyRooms is what the endpoint needs from the roomserver.
type HierarchyRooms interface {
	rsapi.SpaceReader
	ServerParticipates(ctx context.Context, roomID, server string) (bool, error)
	ServerACLAllows(ctx context.Context, roomID, server string) (bool, error)
}

// hierarchyRoom is a summary with its children_state, always present.
type hierarchyRoom struct {
	*rsapi.RoomSummary
	ChildrenState []rsapi.SpaceChild `json:"children_state"`
}

type hierarchyAPI struct{ rooms HierarchyRooms }

// RegisterHierarchy registers the endpoint; call it before the server
// serves (internal/server does).
func (f *FederationAPI) RegisterHierarchy(rooms HierarchyRooms) {
	h := &hierarchyAPI{rooms: rooms}
	f.Handle("/_matrix/federation/v1/hierarchy/{roomId}", h.hierarchy, http.MethodGet)
}

// serverMaySee reports whether a server could peek or join the room: it
// is public, world_readable, knockable or restricted (the asking server
// checks the allow list for its user), or one of its users is joined or
// invited.
func (h *hierarchyAPI) serverMaySee(ctx context.Context, s *rsapi.RoomSummary, origin spec.ServerName) (bool, error) {
	if ok, err := h.rooms.ServerACLAllows(ctx, s.RoomID, string(origin)); err != nil || !ok {
		return false, err
	}
	switch s.JoinRule {
	case spec.Public, spec.Knock, spec.KnockRestricted, spec.Restricted:
		return true, nil
	}
	if s.WorldReadable {
		return true, nil
	}
	return h.rooms.ServerParticipates(ctx, s.RoomID, string(origin))
}

func (h *hierarchyAPI) hierarchy(w http.ResponseWriter, r *http.Request, _ *fclient.FederationRequest, origin spec.ServerName) error {
	ctx := r.Context()
	roomID, err := readsRoomParam(r)
	if err != nil {
		return err
	}
	suggestedOnly := r.URL.Query().Get("suggested_only") == "true"
	room, err := h.rooms.RoomSummary(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return httputil.NotFound("Unknown room")
	}
	if err != nil {
		return err
	}
	if ok, err := h.serverMaySee(ctx, room, origin); err != nil {
		return err
	} else if !ok {
		return httputil.NotFound("Room %s is not accessible to %s", roomID, origin)
	}
	children := []*rsapi.RoomSummary{}
	inaccessible := []string{}
	childrenState := []rsapi.SpaceChild{}
	for _, c := range room.ChildrenState {
		if suggestedOnly && !c.Suggested() {
			continue
		}
		childrenState = append(childrenState, c)
		if len(childrenState) > maxHierarchyChildren {
			continue
		}
		child, err := h.rooms.RoomSummary(ctx, c.StateKey)
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			continue // nothing to tell about it
		}
		if err != nil {
			return err
		}
		ok, err := h.serverMaySee(ctx, child, origin)
		if err != nil {
			return err
		}
		if ok {
			children = append(children, child)
		} else {
			inaccessible = append(inaccessible, child.RoomID)
		}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{
		"room":                  hierarchyRoom{RoomSummary: room, ChildrenState: childrenState},
		"children":              children,
		"inaccessible_children": inaccessible,
	})
	return nil
}
