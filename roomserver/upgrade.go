package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/roomserver/api"
)

// Room upgrades, as the spec's room upgrades module describes the server's
// part: check the power to send m.room.tombstone, create the replacement
// room with a predecessor, copy the transferable state, move the local
// aliases and the directory listing, tombstone the old room and restrict it.

// transferredState is the state copied into the replacement room, in the
// order it is sent there (after the upgrader's join and the power levels):
// the spec's recommended list plus the canonical alias, whose aliases move
// with the room.
var transferredState = []string{
	spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess,
	spec.MRoomName, spec.MRoomTopic, spec.MRoomAvatar,
	"m.room.encryption", "m.room.server_acl", spec.MRoomCanonicalAlias,
}

const (
	sqlMoveAliases       = `UPDATE roomserver_aliases SET room_id = $2 WHERE room_id = $1`
	sqlSelectBannedNIDs  = `SELECT event_nid FROM roomserver_memberships WHERE room_nid = $1 AND membership = 'ban' ORDER BY user_id`
	mRoomTombstone       = "m.room.tombstone"
	tombstoneBody        = "This room has been replaced"
	restrictedLevelFloor = 50
)

// UpgradeRoom replaces a room by a new one of another version.
func (r *Roomserver) UpgradeRoom(ctx context.Context, req api.UpgradeRoomRequest) (string, error) {
	newImpl, err := gomatrixserverlib.GetRoomVersion(req.NewVersion)
	if err != nil || !newImpl.Stable() {
		return "", api.ErrUnsupportedRoomVersion
	}
	// One upgrade of a room at a time, so that it gets one successor. The
	// key cannot clash with the room's own lock: room IDs start with "!".
	unlock := r.lockRoom("upgrade " + req.RoomID)
	defer unlock()

	// The auth rules decide now what they would decide for the tombstone,
	// before anything is created.
	empty := ""
	probe, _ := json.Marshal(map[string]string{"body": tombstoneBody, "replacement_room": req.RoomID})
	if err := r.checkSend(ctx, api.NewEvent{
		RoomID: req.RoomID, Sender: req.UserID, Type: mRoomTombstone, StateKey: &empty, Content: probe,
	}); err != nil {
		return "", err
	}

	createReq, restrict, err := r.replacementRoom(ctx, req, newImpl)
	if err != nil {
		return "", err
	}
	// When the new room's ID is ours to choose, the tombstone comes first
	// and the new room's predecessor names it, as clients expect; a v12
	// room's ID is its create event's hash, so there the room comes first.
	tombstoneFirst := !newImpl.DomainlessRoomIDs()
	var newRoomID string
	if tombstoneFirst {
		newRoomID = makeRoomID(r.serverName)
		createReq.RoomID = newRoomID
	} else if newRoomID, err = r.CreateRoom(ctx, createReq); err != nil {
		return "", err
	}

	unlockOld := r.lockRoom(req.RoomID)
	err = r.inTx(ctx, func(t *txn) error {
		old, err := r.loadRoom(ctx, t, req.RoomID)
		if err != nil {
			return err
		}
		if _, err := t.ExecContext(ctx, sqlMoveAliases, req.RoomID, newRoomID); err != nil {
			return err
		}
		res, err := t.ExecContext(ctx, sqlUnpublish, req.RoomID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			if _, err := t.ExecContext(ctx, sqlPublish, newRoomID); err != nil {
				return err
			}
		}
		tombstone, _ := json.Marshal(map[string]string{"body": tombstoneBody, "replacement_room": newRoomID})
		ts, err := r.sendLocal(ctx, t, old, api.NewEvent{
			RoomID: req.RoomID, Sender: req.UserID, Type: mRoomTombstone, StateKey: &empty, Content: tombstone,
		})
		if err != nil {
			return err
		}
		if tombstoneFirst {
			if p, ok := createReq.CreateContent["predecessor"].(map[string]any); ok {
				p["event_id"] = ts.EventID()
			}
		}
		// Best effort, as the spec puts it ("if possible"): without the
		// power to send these the upgrade still stands. A refused local
		// event is never stored, so the transaction goes on cleanly.
		for _, ev := range restrict {
			ev.RoomID, ev.Sender = req.RoomID, req.UserID
			var notAllowed *api.NotAllowedError
			if _, err := r.sendLocal(ctx, t, old, ev); err != nil && !errors.As(err, &notAllowed) {
				return err
			}
		}
		return nil
	})
	unlockOld()
	if err != nil {
		return "", err
	}
	if tombstoneFirst {
		if _, err := r.CreateRoom(ctx, createReq); err != nil {
			return "", err
		}
	}
	return newRoomID, nil
}

// replacementRoom reads the old room and describes the new one, and the
// events that restrict the old room once it is tombstoned.
func (r *Roomserver) replacementRoom(ctx context.Context, req api.UpgradeRoomRequest, newImpl gomatrixserverlib.IRoomVersion) (api.CreateRoomRequest, []api.NewEvent, error) {
	q := r.db.Reader()
	old, err := r.loadRoom(ctx, q, req.RoomID)
	if err != nil {
		return api.CreateRoomRequest{}, nil, err
	}
	tuples := []gomatrixserverlib.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels}}
	for _, typ := range transferredState {
		tuples = append(tuples, gomatrixserverlib.StateKeyTuple{EventType: typ})
	}
	evs, err := r.stateEventsFor(ctx, q, old.snapshot, tuples)
	if err != nil {
		return api.CreateRoomRequest{}, nil, err
	}
	current := map[string]gomatrixserverlib.PDU{}
	for _, ev := range evs {
		current[ev.Type()] = ev
	}
	oldCreate := current[spec.MRoomCreate]
	if oldCreate == nil {
		return api.CreateRoomRequest{}, nil, api.ErrRoomNotFound
	}

	createContent := map[string]any{}
	predecessor := map[string]any{"room_id": req.RoomID}
	// event_id is deprecated but still wanted "where practical": the old
	// room's newest event.
	if xs, err := r.extremities(ctx, q, old.nid); err != nil {
		return api.CreateRoomRequest{}, nil, err
	} else if len(xs) > 0 {
		predecessor["event_id"] = xs[0].eventID
	}
	createContent["predecessor"] = predecessor
	oc := gjson.ParseBytes(oldCreate.Content())
	if t := oc.Get("type"); t.Type == gjson.String {
		createContent["type"] = t.String()
	}
	// A room closed to other servers stays closed.
	if f := oc.Get(`m\.federate`); f.IsBool() {
		createContent["m.federate"] = f.Bool()
	}
	newCreators := []string{req.UserID}
	if newImpl.PrivilegedCreators() && len(req.AdditionalCreators) > 0 {
		createContent["additional_creators"] = req.AdditionalCreators
		newCreators = append(newCreators, req.AdditionalCreators...)
	}

	initial := []api.StateEvent{{Type: spec.MRoomMember, StateKey: req.UserID, Content: map[string]string{"membership": "join"}}}
	var restorePL map[string]any
	canBan := func(user string) bool { return !slices.Contains(newCreators, user) }
	var restrict []api.NewEvent
	if pl := current[spec.MRoomPowerLevels]; pl != nil {
		levels, content, err := normalisedPowerLevels(pl)
		if err != nil {
			return api.CreateRoomRequest{}, nil, err
		}
		newPL, restore := powerLevelsForNewRoom(levels, content, req.UserID, newCreators, newImpl,
			old.verImpl.PrivilegedCreators() && isCreator(oldCreate, spec.SenderID(req.UserID)))
		initial = append(initial, api.StateEvent{Type: spec.MRoomPowerLevels, Content: newPL})
		restorePL = restore
		if !newImpl.PrivilegedCreators() {
			// The auth rules let a user ban only those below them.
			upgraderLevel := newPL["users"].(map[string]int64)[req.UserID]
			canBan = func(user string) bool { return levels.UserLevel(spec.SenderID(user)) < upgraderLevel }
		}
		if ev, ok := restrictedPowerLevels(levels, content); ok {
			restrict = append(restrict, ev)
		}
	}
	for _, typ := range transferredState {
		if ev := current[typ]; ev != nil {
			initial = append(initial, api.StateEvent{Type: typ, Content: json.RawMessage(ev.Content())})
		}
	}
	bans, err := r.bans(ctx, old.nid)
	if err != nil {
		return api.CreateRoomRequest{}, nil, err
	}
	for _, ban := range bans {
		if !canBan(*ban.StateKey()) {
			continue
		}
		content := map[string]any{"membership": "ban"}
		if reason := gjson.GetBytes(ban.Content(), "reason"); reason.Type == gjson.String {
			content["reason"] = reason.String()
		}
		initial = append(initial, api.StateEvent{Type: spec.MRoomMember, StateKey: *ban.StateKey(), Content: content})
	}
	if restorePL != nil {
		initial = append(initial, api.StateEvent{Type: spec.MRoomPowerLevels, Content: restorePL})
	}
	// The old room's canonical alias names aliases that now lead to the new room.
	if current[spec.MRoomCanonicalAlias] != nil {
		restrict = append([]api.NewEvent{{Type: spec.MRoomCanonicalAlias, StateKey: new(string), Content: json.RawMessage("{}")}}, restrict...)
	}
	return api.CreateRoomRequest{
		Version: newImpl.Version(), Creator: req.UserID, CreateContent: createContent, InitialState: initial,
	}, restrict, nil
}

func (r *Roomserver) bans(ctx context.Context, roomNID int64) ([]gomatrixserverlib.PDU, error) {
	q := r.db.Reader()
	rows, err := q.QueryContext(ctx, sqlSelectBannedNIDs, roomNID)
	if err != nil {
		return nil, err
	}
	var nids []int64
	for rows.Next() {
		var nid int64
		if err := rows.Scan(&nid); err != nil {
			rows.Close()
			return nil, err
		}
		nids = append(nids, nid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return r.eventsByNID(ctx, q, nids)
}

// normalisedPowerLevels is a power levels event's content with every level
// an integer: old room versions allow strings, which room version 10 and
// later refuse. Keys the parser does not know are kept as they are.
func normalisedPowerLevels(pl gomatrixserverlib.PDU) (*gomatrixserverlib.PowerLevelContent, map[string]any, error) {
	levels, err := pl.PowerLevels()
	if err != nil {
		return nil, nil, err
	}
	content := map[string]any{}
	if err := json.Unmarshal(pl.Content(), &content); err != nil {
		return nil, nil, err
	}
	content["ban"], content["invite"], content["kick"], content["redact"] = levels.Ban, levels.Invite, levels.Kick, levels.Redact
	content["events_default"], content["state_default"], content["users_default"] = levels.EventsDefault, levels.StateDefault, levels.UsersDefault
	content["users"] = maps.Clone(levels.Users)
	content["events"] = maps.Clone(levels.Events)
	if levels.Notifications != nil {
		content["notifications"] = maps.Clone(levels.Notifications)
	}
	for _, k := range []string{"users", "events", "notifications"} {
		if m, ok := content[k].(map[string]int64); ok && m == nil {
			content[k] = map[string]int64{}
		}
	}
	return levels, content, nil
}

// powerLevelsForNewRoom returns the power levels to create the new room
// with and, when they differ, the ones to end with. In room version 12 and
// later the creators have unlimited power and must not be listed. Before
// that, the upgrader is raised while the state is copied (they may hold
// only the tombstone's level) and put back afterwards; a creator of a
// version 12 room, who had unlimited power, keeps the room's top level.
func powerLevelsForNewRoom(levels *gomatrixserverlib.PowerLevelContent, content map[string]any, upgrader string,
	creators []string, newImpl gomatrixserverlib.IRoomVersion, wasPrivilegedCreator bool) (initial, final map[string]any) {
	users := maps.Clone(levels.Users)
	if users == nil {
		users = map[string]int64{}
	}
	withUsers := func(u map[string]int64) map[string]any {
		c := maps.Clone(content)
		c["users"] = u
		return c
	}
	if newImpl.PrivilegedCreators() {
		for _, c := range creators {
			delete(users, c)
		}
		return withUsers(users), nil
	}
	// Enough for every state event and ban the copy sends.
	needed := max(levels.Ban, levels.StateDefault)
	for _, l := range levels.Events {
		needed = max(needed, l)
	}
	own := levels.UserLevel(spec.SenderID(upgrader))
	if wasPrivilegedCreator {
		own = max(100, needed)
		for _, l := range users {
			own = max(own, l)
		}
	}
	users[upgrader] = max(own, needed)
	initial = withUsers(maps.Clone(users))
	if users[upgrader] == own {
		return initial, nil
	}
	users[upgrader] = own
	return initial, withUsers(users)
}

// restrictedPowerLevels stops ordinary users from speaking and inviting in
// the old room: events_default and invite become at least
// max(50, users_default+1), as the spec suggests.
func restrictedPowerLevels(levels *gomatrixserverlib.PowerLevelContent, content map[string]any) (api.NewEvent, bool) {
	floor := max(int64(restrictedLevelFloor), levels.UsersDefault+1)
	if levels.EventsDefault >= floor && levels.Invite >= floor {
		return api.NewEvent{}, false
	}
	c := maps.Clone(content)
	c["events_default"] = max(levels.EventsDefault, floor)
	c["invite"] = max(levels.Invite, floor)
	raw, _ := json.Marshal(c)
	return api.NewEvent{Type: spec.MRoomPowerLevels, StateKey: new(string), Content: raw}, true
}
