package roomserver

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// CreateRoom makes a room: the create event, then req.InitialState in
// order (the creator's join first), all in one transaction, so a room is
// either wholly there or not at all.
func (r *Roomserver) CreateRoom(ctx context.Context, req api.CreateRoomRequest) (string, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(req.Version)
	if err != nil || !verImpl.Stable() {
		return "", api.ErrUnsupportedRoomVersion
	}
	content := map[string]any{}
	for k, v := range req.CreateContent {
		content[k] = v
	}
	content["room_version"] = string(req.Version)
	if isPreV11(req.Version) {
		// Before room version 11 the create event names its creator.
		content["creator"] = req.Creator
	}
	rawContent, err := json.Marshal(content)
	if err != nil {
		return "", api.BadEventf("creation_content: %v", err)
	}
	emptyKey := ""
	proto := gomatrixserverlib.ProtoEvent{
		SenderID: req.Creator, Type: spec.MRoomCreate, StateKey: &emptyKey,
		Content: rawContent, Depth: 1, PrevEvents: []string{}, AuthEvents: []string{},
	}
	if !verImpl.DomainlessRoomIDs() {
		proto.RoomID = req.RoomID
		if proto.RoomID == "" {
			proto.RoomID = makeRoomID(r.serverName)
		}
	}
	// In room version 12 the room ID is the create event's hash: two
	// rooms created by one user in the same millisecond would be the same
	// room, so create events get strictly increasing timestamps.
	create, err := r.signAt(verImpl, &proto, r.nextCreateTime())
	if err != nil {
		return "", err
	}
	roomID := create.RoomID().String()

	unlock := r.lockRoom(roomID)
	defer unlock()
	err = r.inTx(ctx, func(t *txn) error {
		if err := r.createRoomExtras(ctx, t, roomID, req); err != nil {
			return err
		}
		rm := &room{id: roomID, version: req.Version, verImpl: verImpl}
		if err := t.QueryRowContext(ctx, sqlInsertRoom, roomID, string(req.Version), storage.NowMillis()).Scan(&rm.nid); err != nil {
			return err
		}
		if _, err := r.inputEvent(ctx, t, rm, create, inputOpts{local: true}); err != nil {
			return err
		}
		for _, s := range req.InitialState {
			raw, err := json.Marshal(s.Content)
			if err != nil {
				return api.BadEventf("content of %s: %v", s.Type, err)
			}
			sk := s.StateKey
			if _, err := r.sendLocal(ctx, t, rm, api.NewEvent{
				RoomID: roomID, Sender: req.Creator, Type: s.Type, StateKey: &sk, Content: raw,
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return roomID, nil
}

// isPreV11 reports room versions 1-10, whose create events carry "creator".
func isPreV11(v gomatrixserverlib.RoomVersion) bool {
	return !redactsInContent(v)
}

// makeRoomID makes a room ID for room versions that name their server.
func makeRoomID(server spec.ServerName) string {
	return "!" + randomID() + ":" + string(server)
}

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// nextCreateTime is now, or a millisecond after the last create event if
// that is not later.
func (r *Roomserver) nextCreateTime() time.Time {
	r.createMu.Lock()
	defer r.createMu.Unlock()
	now := time.Now().UnixMilli()
	if now <= r.lastCreateMS {
		now = r.lastCreateMS + 1
	}
	r.lastCreateMS = now
	return time.UnixMilli(now)
}
