package federationapi

import (
	"context"
	"errors"
	"slices"

	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Other servers' users whose device lists we cache stop being cached as
// soon as no local user shares a room with them: from then on their
// server sends us no m.device_list_update, so the cache would go stale
// and, once a room is shared again, be served stale (their server
// announces their list when *they* join, keys_join.go, but not when one
// of our users joins them). The key server also drops such a list when
// next asked about (keyserver/remote.go), which is too late when the
// next question comes after a room is shared again.
//
// The sender calls membershipChanged for every event in the stream,
// local or remote: a remote user who left is checked; when a local user's
// leave takes the last of our users out of a room, the room's remote
// members are (one read of the room's state, once per room we stop being
// in).
//
// Whether a leave leaves a user unshared is read from the current state,
// which may already hold their next join (the sender reads the stream a
// moment after it is written): so a remote user's new join also drops
// their cached list. It may have gone stale while no room was shared, and
// the next query (or their server's announcement) brings it afresh.

// membershipChanged forgets the cached lists that a leave (or kick, or
// ban) leaves unshared, and a remote user's list when they join.
func (d *DeviceListSender) membershipChanged(ctx context.Context, out rsapi.OutputEvent) error {
	ev := out.Event
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || !slices.Contains(out.AddsState, ev.EventID()) {
		return nil
	}
	m, err := ev.Membership()
	if err != nil || m == spec.Invite || m == spec.Knock {
		return nil
	}
	if m == spec.Join {
		return d.remoteJoined(ctx, out)
	}
	member := *ev.StateKey()
	candidates := []string{member}
	if userServerName(member) == d.s.self {
		in, err := d.s.weAreIn(ctx, out.RoomID)
		if err != nil || in {
			return err
		}
		if d.s.fed != nil && d.s.fed.remoteKeys != nil {
			// Else a query or update in the next seconds could cache a
			// list again on the strength of a room we are no longer in.
			d.s.fed.remoteKeys.forgetResident(out.RoomID)
		}
		state, err := d.s.rs.CurrentState(ctx, out.RoomID)
		if err != nil {
			return err
		}
		candidates = candidates[:0]
		for _, e := range state {
			if e.Type() != spec.MRoomMember || e.StateKey() == nil || userServerName(*e.StateKey()) == d.s.self {
				continue
			}
			if m, err := e.Membership(); err == nil && m == spec.Join {
				candidates = append(candidates, *e.StateKey())
			}
		}
	}
	for _, userID := range candidates {
		if _, cached, err := d.keys.RemoteDeviceListStreamID(ctx, userID); err != nil || !cached {
			if err != nil {
				return err
			}
			continue
		}
		shares, err := d.s.sharesRoomWithUs(ctx, userID)
		if err != nil {
			return err
		}
		if !shares {
			if err := d.keys.ForgetRemoteDeviceList(ctx, userID); err != nil {
				return err
			}
		}
	}
	return nil
}

// remoteJoined forgets the cached list of a remote user who joined a room
// (not a profile change of one who was in it).
func (d *DeviceListSender) remoteJoined(ctx context.Context, out rsapi.OutputEvent) error {
	if userServerName(*out.Event.StateKey()) == d.s.self {
		return nil
	}
	if _, cached, err := d.keys.RemoteDeviceListStreamID(ctx, *out.Event.StateKey()); err != nil || !cached {
		return err
	}
	userID, ok, err := d.s.isNewJoin(ctx, out)
	if err != nil || !ok {
		return err
	}
	return d.keys.ForgetRemoteDeviceList(ctx, userID)
}

// weAreIn reports whether a local user is joined to the room now.
func (s *Sender) weAreIn(ctx context.Context, roomID string) (bool, error) {
	servers, err := s.rs.ResidentServers(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return false, nil
	}
	return slices.Contains(servers, string(s.self)), err
}

// sharesRoomWithUs reports whether a user is joined to a room a local
// user is joined to, now (RemoteKeys.SharesRoom may answer from a few
// seconds ago).
func (s *Sender) sharesRoomWithUs(ctx context.Context, userID string) (bool, error) {
	memberships, err := s.rs.Memberships(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, m := range memberships {
		if m.Membership != spec.Join {
			continue
		}
		if in, err := s.weAreIn(ctx, m.RoomID); err != nil || in {
			return in, err
		}
	}
	return false, nil
}
