package roomserver

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/state"
)

// The published room directory: which rooms are listed, and the summary
// of each that /publicRooms shows, read from the room's current state.

const (
	sqlPublish   = `INSERT INTO roomserver_published (room_id) VALUES ($1) ON CONFLICT DO NOTHING`
	sqlUnpublish = `DELETE FROM roomserver_published WHERE room_id = $1`
	sqlPublished = `SELECT 1 FROM roomserver_published WHERE room_id = $1`
	// The listed rooms with their current state and joined member count.
	sqlSelectPublished = `SELECT r.room_id, r.state_snapshot_nid,
		(SELECT COUNT(*) FROM roomserver_memberships m WHERE m.room_nid = r.room_nid AND m.membership = 'join')
		FROM roomserver_published p JOIN roomserver_rooms r ON r.room_id = p.room_id`
)

// SetPublished lists a room in the directory or takes it out.
func (r *Roomserver) SetPublished(ctx context.Context, roomID string, published bool) error {
	if _, err := r.loadRoom(ctx, r.db.Reader(), roomID); err != nil {
		return err
	}
	query := sqlUnpublish
	if published {
		query = sqlPublish
	}
	_, err := r.db.Writer().ExecContext(ctx, query, roomID)
	return err
}

// Published reports whether a room is listed in the directory.
func (r *Roomserver) Published(ctx context.Context, roomID string) (bool, error) {
	q := r.db.Reader()
	if _, err := r.loadRoom(ctx, q, roomID); err != nil {
		return false, err
	}
	var one int
	err := q.QueryRowContext(ctx, sqlPublished, roomID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// summaryState is the state a directory entry is made from.
var summaryState = []gomatrixserverlib.StateKeyTuple{
	{EventType: spec.MRoomCreate}, {EventType: spec.MRoomName}, {EventType: spec.MRoomTopic},
	{EventType: spec.MRoomAvatar}, {EventType: spec.MRoomCanonicalAlias}, {EventType: spec.MRoomJoinRules},
	{EventType: spec.MRoomHistoryVisibility}, {EventType: spec.MRoomGuestAccess},
}

// PublicRooms lists the published rooms matching the filter, most joined
// members first, then by room ID. A personal server lists few rooms, so
// every listed room is summarised on each call and the caller pages
// through the result.
func (r *Roomserver) PublicRooms(ctx context.Context, filter api.PublicRoomsFilter) ([]api.PublicRoom, error) {
	q := r.db.Reader()
	type listed struct {
		roomID   string
		snapshot int64
		joined   int
	}
	rows, err := q.QueryContext(ctx, sqlSelectPublished)
	if err != nil {
		return nil, err
	}
	var all []listed
	for rows.Next() {
		var l listed
		if err := rows.Scan(&l.roomID, &l.snapshot, &l.joined); err != nil {
			rows.Close()
			return nil, err
		}
		all = append(all, l)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := []api.PublicRoom{}
	for _, l := range all {
		evs, err := r.stateEventsFor(ctx, q, state.SnapshotNID(l.snapshot), summaryState)
		if err != nil {
			return nil, err
		}
		room := summarise(l.roomID, l.joined, evs)
		if matches(room, filter) {
			out = append(out, room)
		}
	}
	slices.SortFunc(out, func(a, b api.PublicRoom) int {
		if c := cmp.Compare(b.NumJoinedMembers, a.NumJoinedMembers); c != 0 {
			return c
		}
		return strings.Compare(a.RoomID, b.RoomID)
	})
	return out, nil
}

func summarise(roomID string, joined int, evs []gomatrixserverlib.PDU) api.PublicRoom {
	room := api.PublicRoom{RoomID: roomID, NumJoinedMembers: joined}
	for _, ev := range evs {
		c := gjson.ParseBytes(ev.Content())
		switch ev.Type() {
		case spec.MRoomCreate:
			room.RoomType = stringField(c, "type")
		case spec.MRoomName:
			room.Name = stringField(c, "name")
		case spec.MRoomTopic:
			room.Topic = plainTopic(c)
		case spec.MRoomAvatar:
			room.AvatarURL = stringField(c, "url")
		case spec.MRoomCanonicalAlias:
			room.CanonicalAlias = stringField(c, "alias")
		case spec.MRoomJoinRules:
			room.JoinRule = stringField(c, "join_rule")
		case spec.MRoomHistoryVisibility:
			room.WorldReadable = stringField(c, "history_visibility") == "world_readable"
		case spec.MRoomGuestAccess:
			room.GuestCanJoin = stringField(c, "guest_access") == "can_join"
		}
	}
	return room
}

// stringField is a string field of content, "" when absent or not a string.
func stringField(c gjson.Result, key string) string {
	v := c.Get(gjson.Escape(key))
	if v.Type != gjson.String {
		return ""
	}
	return v.String()
}

// plainTopic is the text/plain form of a topic: from the m.topic content
// block when it has one (a missing mimetype means text/plain), else the
// topic field, which is plain text.
func plainTopic(c gjson.Result) string {
	for _, t := range c.Get(`m\.topic.m\.text`).Array() {
		mime := t.Get("mimetype").String()
		if (mime == "" || mime == "text/plain") && t.Get("body").Type == gjson.String {
			return t.Get("body").String()
		}
	}
	return stringField(c, "topic")
}

func matches(room api.PublicRoom, f api.PublicRoomsFilter) bool {
	if len(f.RoomTypes) > 0 && !slices.Contains(f.RoomTypes, room.RoomType) {
		return false
	}
	if f.SearchTerm == "" {
		return true
	}
	term := strings.ToLower(f.SearchTerm)
	for _, field := range []string{room.Name, room.Topic, room.CanonicalAlias} {
		if strings.Contains(strings.ToLower(field), term) {
			return true
		}
	}
	return false
}

// CanSendState builds the event the user would send and checks it
// against the auth rules at the current state, without storing it: the
// auth rules, not a copy of them, decide (membership, power levels, the
// creators of room version 12).
func (r *Roomserver) CanSendState(ctx context.Context, roomID, userID, eventType string) (bool, error) {
	empty := ""
	err := r.checkSend(ctx, api.NewEvent{RoomID: roomID, Sender: userID, Type: eventType, StateKey: &empty})
	var notAllowed *api.NotAllowedError
	if errors.As(err, &notAllowed) {
		return false, nil
	}
	return err == nil, err
}

// checkSend is sendLocal without the storing.
func (r *Roomserver) checkSend(ctx context.Context, ev api.NewEvent) error {
	return r.db.WithTx(ctx, func(tx *sql.Tx) error {
		rm, err := r.loadRoom(ctx, tx, ev.RoomID)
		if err != nil {
			return err
		}
		_, err = r.buildEvent(ctx, tx, rm, ev)
		return err
	})
}

// IsRoomCreator reports whether the user sent the room's create event or
// is named in its additional_creators (room version 12).
func (r *Roomserver) IsRoomCreator(ctx context.Context, roomID, userID string) (bool, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return false, err
	}
	evs, err := r.stateEventsFor(ctx, q, rm.snapshot, []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}})
	if err != nil || len(evs) == 0 {
		return false, err
	}
	if rm.verImpl.PrivilegedCreators() {
		return isCreator(evs[0], spec.SenderID(userID)), nil
	}
	return evs[0].SenderID() == spec.SenderID(userID), nil
}
