package roomserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// What the membership endpoints need beyond sending events: the allow
// conditions of restricted rooms, and forgotten rooms.

const (
	sqlInsertAlias = `INSERT INTO roomserver_aliases (alias, room_id, creator) VALUES ($1, $2, $3)`

	sqlSelectJoinedUsers = `SELECT user_id FROM roomserver_memberships
		WHERE room_nid = $1 AND membership = 'join' ORDER BY user_id`

	// A room is forgotten while the user's membership is still the event
	// they forgot it at: any later membership event (a join, an invite, a
	// knock) brings it back without anyone having to clear the row.
	sqlForgetRoom = `INSERT INTO roomserver_forgotten (room_nid, user_id, event_nid)
		SELECT room_nid, user_id, event_nid FROM roomserver_memberships
		WHERE room_nid = $1 AND user_id = $2 AND membership IN ('leave', 'ban')
		ON CONFLICT (room_nid, user_id) DO UPDATE SET event_nid = excluded.event_nid`
	sqlSelectForgotten = `SELECT r.room_id FROM roomserver_forgotten f
		JOIN roomserver_memberships m ON m.room_nid = f.room_nid AND m.user_id = f.user_id AND m.event_nid = f.event_nid
		JOIN roomserver_rooms r ON r.room_nid = f.room_nid
		WHERE f.user_id = $1 ORDER BY r.room_id`
	sqlSelectRoomForgotten = `SELECT 1 FROM roomserver_forgotten f
		JOIN roomserver_memberships m ON m.room_nid = f.room_nid AND m.user_id = f.user_id AND m.event_nid = f.event_nid
		WHERE f.room_nid = $1 AND f.user_id = $2`
)

// createRoomExtras does, in CreateRoom's transaction, what a new room
// needs besides its events: its alias, and its directory listing.
func (r *Roomserver) createRoomExtras(ctx context.Context, t *txn, roomID string, req api.CreateRoomRequest) error {
	if req.Alias != "" {
		_, err := t.ExecContext(ctx, sqlInsertAlias, req.Alias, roomID, req.Creator)
		if storage.IsUniqueViolation(err) {
			return api.ErrAliasInUse
		}
		if err != nil {
			return err
		}
	}
	if req.Publish {
		if _, err := t.ExecContext(ctx, sqlPublish, roomID); err != nil {
			return err
		}
	}
	return nil
}

// JoinAuthoriser picks the local user a join to a restricted room names in
// join_authorised_via_users_server, after checking the room's allow
// conditions (the auth rules check only the authoriser, not the
// conditions).
func (r *Roomserver) JoinAuthoriser(ctx context.Context, roomID, userID string) (string, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return "", err
	}
	evs, err := r.stateEventsFor(ctx, q, rm.snapshot, []gomatrixserverlib.StateKeyTuple{
		{EventType: spec.MRoomCreate}, {EventType: spec.MRoomJoinRules},
		{EventType: spec.MRoomPowerLevels}, {EventType: spec.MRoomMember, StateKey: userID},
	})
	if err != nil {
		return "", err
	}
	var create, joinRules, powerLevels, member gomatrixserverlib.PDU
	for _, ev := range evs {
		switch ev.Type() {
		case spec.MRoomCreate:
			create = ev
		case spec.MRoomJoinRules:
			joinRules = ev
		case spec.MRoomPowerLevels:
			powerLevels = ev
		case spec.MRoomMember:
			member = ev
		}
	}
	if create == nil || joinRules == nil {
		return "", nil
	}
	var rule gomatrixserverlib.JoinRuleContent
	if err := json.Unmarshal(joinRules.Content(), &rule); err != nil || !restrictedJoinRule(rm, rule.JoinRule) {
		return "", nil
	}
	if member != nil {
		// Invited (or already joined) users need no allow condition.
		if m, _ := member.Membership(); m == spec.Join || m == spec.Invite {
			return "", nil
		}
	}

	allowed := false
	for _, cond := range rule.Allow {
		if cond.Type != spec.MRoomMembership {
			continue
		}
		// Every room is local until federation exists, so the membership
		// index is current; rooms this server does not know cannot be
		// checked and count as not satisfied.
		m, err := r.Membership(ctx, cond.RoomID, userID)
		if errors.Is(err, api.ErrRoomNotFound) {
			continue
		}
		if err != nil {
			return "", err
		}
		if m.Membership == spec.Join {
			allowed = true
			break
		}
	}
	if !allowed {
		return "", &api.NotAllowedError{Reason: "You are not a member of any room that this room's join rules allow"}
	}

	// Any joined local member who may invite can authorise the join.
	levels := gomatrixserverlib.PowerLevelContent{}
	levels.Defaults()
	if powerLevels != nil {
		if levels, err = gomatrixserverlib.NewPowerLevelContentFromEvent(powerLevels); err != nil {
			return "", &api.NotAllowedError{Reason: "The room's power levels cannot be read"}
		}
	}
	rows, err := q.QueryContext(ctx, sqlSelectJoinedUsers, rm.nid)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	suffix := ":" + string(r.serverName)
	for rows.Next() {
		var candidate string
		if err := rows.Scan(&candidate); err != nil {
			return "", err
		}
		if !strings.HasSuffix(candidate, suffix) {
			continue
		}
		if userPowerLevel(rm, create, powerLevels, &levels, candidate) >= levels.Invite {
			return candidate, nil
		}
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	return "", &api.NotAllowedError{Reason: "No member of the room on this server can authorise the join", NoLocalAuthoriser: true}
}

// restrictedJoinRule reports whether a join rule restricts joins in the
// room's version: restricted from version 8, knock_restricted from 10.
// Elsewhere such rules are unknown and act as invite-only.
func restrictedJoinRule(rm *room, joinRule string) bool {
	switch joinRule {
	case spec.Restricted:
		return rm.verImpl.CheckRestrictedJoinsAllowed() == nil
	case spec.KnockRestricted:
		n, err := strconv.Atoi(string(rm.version))
		return err == nil && n >= 10
	}
	return false
}

// userPowerLevel is a user's power level as the auth rules count it.
func userPowerLevel(rm *room, create, powerLevels gomatrixserverlib.PDU, levels *gomatrixserverlib.PowerLevelContent, userID string) int64 {
	if rm.verImpl.PrivilegedCreators() && isCreator(create, spec.SenderID(userID)) {
		return gomatrixserverlib.CreatorPowerLevel
	}
	if powerLevels == nil {
		// Without a power levels event the creator has 100, others 0.
		if string(create.SenderID()) == userID {
			return 100
		}
		return 0
	}
	return levels.UserLevel(spec.SenderID(userID))
}

// ForgetRoom records that a user forgot a room they have left or been
// banned from; false when they are in it (or never were).
func (r *Roomserver) ForgetRoom(ctx context.Context, roomID, userID string) (bool, error) {
	rm, err := r.loadRoom(ctx, r.db.Reader(), roomID)
	if err != nil {
		return false, err
	}
	res, err := r.db.Writer().ExecContext(ctx, sqlForgetRoom, rm.nid, userID)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// ForgottenRooms lists the rooms a user has forgotten and not come back to.
func (r *Roomserver) ForgottenRooms(ctx context.Context, userID string) ([]string, error) {
	rows, err := r.db.Reader().QueryContext(ctx, sqlSelectForgotten, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	rooms := []string{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		rooms = append(rooms, id)
	}
	return rooms, rows.Err()
}

// RoomForgotten reports whether a user has forgotten a room.
func (r *Roomserver) RoomForgotten(ctx context.Context, roomID, userID string) (bool, error) {
	q := r.db.Reader()
	rm, err := r.loadRoom(ctx, q, roomID)
	if err != nil {
		return false, err
	}
	var one int
	err = q.QueryRowContext(ctx, sqlSelectRoomForgotten, rm.nid, userID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}
