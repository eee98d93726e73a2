package roomserver

import (
	"context"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
)

// Room summaries for the space hierarchy and room summary endpoints
// (roomserver/api/spaces.go): the directory's summary of a room plus its
// version, encryption, restricted allow list and space children.

const sqlCountJoined = `SELECT COUNT(*) FROM roomserver_memberships WHERE room_nid = $1 AND membership = 'join'`

// roomSummaryState is the state a summary is made from, besides the
// m.space.child events.
var roomSummaryState = append(append([]gomatrixserverlib.StateKeyTuple{}, summaryState...),
	gomatrixserverlib.StateKeyTuple{EventType: spec.MRoomEncryption})

// RoomSummary summarises a room from its current state.
func (r *Roomserver) RoomSummary(ctx context.Context, roomID string) (*api.RoomSummary, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return nil, err
	}
	if rm.snapshot == 0 {
		return nil, api.ErrRoomNotFound // known only from an invite or knock
	}
	evs, err := r.stateEventsFor(ctx, q, rm.snapshot, roomSummaryState)
	if err != nil {
		return nil, err
	}
	hasCreate := false
	for _, ev := range evs {
		hasCreate = hasCreate || ev.Type() == spec.MRoomCreate
	}
	if !hasCreate {
		return nil, api.ErrRoomNotFound
	}
	var joined int
	if err := q.QueryRowContext(ctx, sqlCountJoined, rm.nid).Scan(&joined); err != nil {
		return nil, err
	}
	pr := summarise(roomID, joined, evs)
	s := &api.RoomSummary{PublicRoom: pr, RoomVersion: string(rm.version)}
	for _, ev := range evs {
		c := gjson.ParseBytes(ev.Content())
		switch ev.Type() {
		case spec.MRoomEncryption:
			s.Encryption = stringField(c, "algorithm")
		case spec.MRoomJoinRules:
			if s.JoinRule == spec.Restricted || s.JoinRule == spec.KnockRestricted {
				for _, allow := range c.Get("allow").Array() {
					if allow.Get("type").String() == "m.room_membership" && allow.Get("room_id").Type == gjson.String {
						s.AllowedRoomIDs = append(s.AllowedRoomIDs, allow.Get("room_id").String())
					}
				}
			}
		}
	}
	children, err := r.StateAt(ctx, int64(rm.snapshot), "m.space.child")
	if err != nil {
		return nil, err
	}
	for _, ev := range children {
		if ev.StateKey() == nil {
			continue
		}
		child := api.SpaceChild{Type: ev.Type(), StateKey: *ev.StateKey(), Sender: string(ev.SenderID()),
			Content: ev.Content(), OriginServerTS: int64(ev.OriginServerTS())}
		if child.ValidChild() {
			s.ChildrenState = append(s.ChildrenState, child)
		}
	}
	api.SortSpaceChildren(s.ChildrenState)
	return s, nil
}
