package syncapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
)

// Invites and knocks that came through another server. This server may
// have no state of such a room, so the federation API stores the stripped
// state the other server sent in the user's membership event, as
// unsigned.invite_room_state or unsigned.knock_room_state (see
// federationapi/membership_inbound.go and roomserver's
// InputOutOfBandMembership); /sync serves it as invite_state and
// knock_state.

const sqlCurrentMemberEvent = `SELECT s.event_id, e.event_json FROM syncapi_current_state s
	JOIN syncapi_events e ON e.event_id = s.event_id
	WHERE s.room_id = $1 AND s.type = 'm.room.member' AND s.state_key = $2`

// remoteStrippedState returns the stripped state another server sent with
// the user's invite or knock, followed by the invite or knock itself, and
// true; false when the user's membership event carries none (the room's
// state here describes the room then).
func (b *builder) remoteStrippedState(ctx context.Context, roomID string) (eventList, bool, error) {
	out := eventList{Events: []any{}}
	var eventID, js string
	err := b.tx.QueryRowContext(ctx, sqlCurrentMemberEvent, roomID, b.req.userID).Scan(&eventID, &js)
	if errors.Is(err, sql.ErrNoRows) {
		return out, false, nil
	}
	if err != nil {
		return out, false, err
	}
	ev := gjson.Parse(js)
	var field string
	switch ev.Get("content.membership").String() {
	case spec.Invite:
		field = "invite_room_state"
	case spec.Knock:
		field = "knock_room_state"
	default:
		return out, false, nil
	}
	list := ev.Get("unsigned." + field)
	if !list.IsArray() {
		return out, false, nil
	}
	for _, s := range list.Array() {
		t, sk, c := s.Get("type"), s.Get("state_key"), s.Get("content")
		if t.Type != gjson.String || sk.Type != gjson.String || !c.IsObject() {
			continue
		}
		if t.String() == spec.MRoomMember && sk.String() == b.req.userID {
			continue // the user's own membership comes last, whole
		}
		out.Events = append(out.Events, map[string]any{
			"type": t.String(), "state_key": sk.String(), "sender": s.Get("sender").String(), "content": json.RawMessage(c.Raw),
		})
	}
	out.Events = append(out.Events, map[string]any{
		"type": spec.MRoomMember, "state_key": b.req.userID, "sender": ev.Get("sender").String(),
		"content": json.RawMessage(ev.Get("content").Raw), "event_id": eventID,
		"origin_server_ts": ev.Get("origin_server_ts").Int(),
	})
	return out, true, nil
}
