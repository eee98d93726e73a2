package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// A local user's device list, announced to the servers of a room they
// join that were not receiving updates about them. The server-server
// spec (Device Management) says m.device_list_update EDUs "must be sent
// whenever that user's device list changes (i.e. ... when that user joins
// a room which contains servers which are not already receiving updates
// for that user's device list ...)".
//
// The sender calls announceJoin for each new join of a local user it
// reads from the roomserver's stream, after queueing the join itself. The
// new servers are the room's servers that share none of the user's other
// rooms. Each gets one m.device_list_update per device with its current
// keys, all with stream_id the user's latest device change (what
// /user/devices answers) and that same ID as prev_id: a server that has
// applied it already ignores them, and any other (one that has no list or
// an old one) sees a prev_id it lacks and resyncs, because from a single
// device it cannot tell what else changed. A user with cross-signing keys
// gets an m.signing_key_update too.

// isLocalJoin reports whether an event of the stream is a local user's
// new join (see isNewJoin).
func (s *Sender) isLocalJoin(ctx context.Context, out rsapi.OutputEvent) (string, bool, error) {
	if k := out.Event.StateKey(); k == nil || userServerName(*k) != s.self {
		return "", false, nil
	}
	return s.isNewJoin(ctx, out)
}

// isNewJoin reports whether an event of the stream is a join that is now
// in the room's state and was not a join before (a profile change is a
// join after a join), and whose join it is. It reads the membership it replaced, so
// it costs one event read per join.
func (s *Sender) isNewJoin(ctx context.Context, out rsapi.OutputEvent) (string, bool, error) {
	ev := out.Event
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || !slices.Contains(out.AddsState, ev.EventID()) {
		return "", false, nil
	}
	if m, err := ev.Membership(); err != nil || m != spec.Join {
		return "", false, nil
	}
	userID := *ev.StateKey()
	for _, id := range out.RemovesState {
		old, err := s.rs.Event(ctx, id)
		if errors.Is(err, rsapi.ErrEventNotFound) {
			continue
		}
		if err != nil {
			return "", false, err
		}
		if old == nil || old.PDU == nil || old.PDU.Type() != spec.MRoomMember || old.PDU.StateKey() == nil || *old.PDU.StateKey() != userID {
			continue
		}
		if m, err := old.PDU.Membership(); err == nil && m == spec.Join {
			return "", false, nil
		}
	}
	return userID, true, nil
}

// newServers are the servers of roomID (among dests) that share no other
// room the user is joined to.
func (s *Sender) newServers(ctx context.Context, userID, roomID string, dests []spec.ServerName) ([]spec.ServerName, error) {
	memberships, err := s.rs.Memberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	receiving := map[spec.ServerName]bool{}
	for _, m := range memberships {
		if m.Membership != spec.Join || m.RoomID == roomID {
			continue
		}
		servers, err := s.rs.ResidentServers(ctx, m.RoomID)
		if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
			return nil, err
		}
		for _, srv := range servers {
			receiving[spec.ServerName(srv)] = true
		}
	}
	return slices.DeleteFunc(slices.Clone(dests), func(d spec.ServerName) bool { return receiving[d] }), nil
}

// announceJoin queues the user's device list for the servers of the room
// (dests: the join's destinations) that were not receiving it.
func (d *DeviceListSender) announceJoin(ctx context.Context, out rsapi.OutputEvent, dests []spec.ServerName) error {
	userID, ok, err := d.s.isLocalJoin(ctx, out)
	if err != nil || !ok {
		return err
	}
	to, err := d.s.newServers(ctx, userID, out.RoomID, dests)
	if err != nil || len(to) == 0 {
		return err
	}
	list, err := d.keys.UserDevices(ctx, userID)
	if err != nil {
		return err
	}
	for _, dev := range list.Devices {
		content, err := json.Marshal(map[string]any{
			"user_id": userID, "device_id": dev.DeviceID, "stream_id": list.StreamID,
			"prev_id": []int64{list.StreamID}, "deleted": false, "keys": dev.Keys,
		})
		if err != nil {
			return err
		}
		if err := d.s.queueEDU(ctx, to, queuedEDU{Type: "m.device_list_update", Content: content}); err != nil {
			return err
		}
	}
	if list.MasterKey != nil || list.SelfSigningKey != nil {
		c := map[string]any{"user_id": userID}
		if list.MasterKey != nil {
			c["master_key"] = list.MasterKey
		}
		if list.SelfSigningKey != nil {
			c["self_signing_key"] = list.SelfSigningKey
		}
		content, err := json.Marshal(c)
		if err != nil {
			return err
		}
		return d.s.queueEDU(ctx, to, queuedEDU{Type: "m.signing_key_update", Content: content,
			CoalesceKey: coalesceKey("m.signing_key_update", userID)})
	}
	return nil
}
