package syncapi

import (
	"context"
	"database/sql"
	"sort"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/httputil"
)

// End-to-end encryption in /sync: device_lists (changed, left),
// device_one_time_keys_count and device_unused_fallback_key_types, and
// /keys/changes for the client API. The key server owns the device list
// stream (Token.DeviceList); who shares a room with whom comes from this
// component's current state.

// KeyServer is what the sync API needs from the key server.
type KeyServer interface {
	// DeviceListPosition is the newest position of the device list stream.
	DeviceListPosition() int64
	// DeviceListNotify returns a channel closed once the stream is past pos.
	DeviceListNotify(pos int64) <-chan struct{}
	// DeviceListChanges lists the users whose device lists changed in (from, to].
	DeviceListChanges(ctx context.Context, from, to int64) ([]string, error)
	// KeyCounts are a device's one-time key counts and unused fallback key algorithms.
	KeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error)
}

// WithKeyServer gives the sync API the key server.
func WithKeyServer(ks KeyServer) Option { return func(s *SyncAPI) { s.keys = ks } }

// syncKeys fills the end-to-end encryption parts of a sync response and
// moves next.DeviceList. Device list changes are only for incremental
// syncs, as the spec has it.
func (s *SyncAPI) syncKeys(ctx context.Context, req *syncRequest, since Token, next *Token, resp *syncResponse, joinedNow map[string]bool) error {
	if s.keys == nil {
		return nil
	}
	pos := s.keys.DeviceListPosition()
	counts, fallback, err := s.keys.KeyCounts(ctx, req.userID, req.deviceID)
	if err != nil {
		return err
	}
	resp.OTKCounts, resp.Fallback = counts, fallback
	if req.since != nil {
		to := Token{PDU: next.PDU, DeviceList: pos}
		if resp.DeviceLists.Changed, resp.DeviceLists.Left, err = s.deviceListChanges(ctx, req.userID, since, to, joinedNow); err != nil {
			return err
		}
	}
	next.DeviceList = pos
	return nil
}

// KeyChanges answers /keys/changes: the users whose device lists changed
// between two sync tokens, and those who stopped sharing rooms.
func (s *SyncAPI) KeyChanges(ctx context.Context, userID, from, to string) ([]string, []string, error) {
	f, err := ParseToken(from)
	if err != nil {
		return nil, nil, httputil.InvalidParam("from is not a sync token from this server")
	}
	t, err := ParseToken(to)
	if err != nil {
		return nil, nil, httputil.InvalidParam("to is not a sync token from this server")
	}
	if s.keys == nil {
		return nil, nil, nil
	}
	t.DeviceList = min(t.DeviceList, s.keys.DeviceListPosition())
	return s.deviceListChanges(ctx, userID, f, t, nil)
}

// Who shares a room with whom: sqlSharesRoom and sqlRoomPeers (presence.go).
const (
	// sqlMemberChangesInJoinedRooms lists the membership changes in a
	// window of the rooms the user is joined to now.
	sqlMemberChangesInRoom = `SELECT DISTINCT state_key, membership FROM syncapi_events
		WHERE room_id = $1 AND pos > $2 AND pos <= $3 AND type = 'm.room.member'`
	sqlMyMembership = `SELECT membership FROM syncapi_current_state
		WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2`
)

// manyCandidates is where checking users one by one gives way to listing
// all of the user's room-mates at once.
const manyCandidates = 64

// deviceListChanges computes device_lists between two tokens. changed: the
// users sharing a room with userID (or userID themself) whose device
// lists changed, and those who newly share a room (the spec allows adding
// them whenever they share a new room). left: users whose membership
// changes (or userID's) leave them sharing no room any more. Sharing
// means both joined, as in the current state; rooms are not told apart by
// encryption.
// joinedNow, when not nil, are the rooms the user is joined to as of
// to.PDU (a sync has listed them already).
func (s *SyncAPI) deviceListChanges(ctx context.Context, userID string, from, to Token, joinedNow map[string]bool) (changed, left []string, err error) {
	keyUsers, err := s.keys.DeviceListChanges(ctx, from.DeviceList, to.DeviceList)
	if err != nil {
		return nil, nil, err
	}
	changed, left = []string{}, []string{}
	err = s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		check := map[string]bool{} // changed if they share a room
		joined := map[string]bool{}
		gone := map[string]bool{} // left if they share no room
		for _, u := range keyUsers {
			check[u] = true
		}
		if to.PDU > from.PDU {
			if err := s.membershipCandidates(ctx, tx, userID, from.PDU, to.PDU, joinedNow, joined, check, gone); err != nil {
				return err
			}
		}
		sharing, err := newSharing(ctx, tx, userID, len(check)+len(gone))
		// check was filled with the device list changes and with others'
		// joins; a user in it may have joined and left within the window.
		if err != nil {
			return err
		}
		out := map[string]bool{}
		for u := range check {
			if ok, err := sharing.shares(ctx, u); err != nil {
				return err
			} else if ok {
				out[u] = true
			}
		}
		for u := range joined {
			out[u] = true // joined to a room the user is joined to now
		}
		for u := range gone {
			if out[u] || u == userID {
				continue
			}
			if ok, err := sharing.shares(ctx, u); err != nil {
				return err
			} else if !ok {
				left = append(left, u)
			}
		}
		for u := range out {
			changed = append(changed, u)
		}
		return nil
	})
	sort.Strings(changed)
	sort.Strings(left)
	return changed, left, err
}

// membershipCandidates collects, from the membership changes in (from,
// to], the users who now share a room with userID for sure (joined), who
// may share a new one (check), and who may have stopped sharing (gone).
func (s *SyncAPI) membershipCandidates(ctx context.Context, tx *sql.Tx, userID string, from, to int64, in, joined, check, gone map[string]bool) error {
	// Rooms the user joined or left: everyone in them is new, or may be gone.
	rooms, err := queryStrings(ctx, tx, sqlMembershipChanges, userID, from, to)
	if err != nil {
		return err
	}
	for _, roomID := range rooms {
		var mine sql.NullString
		if err := tx.QueryRowContext(ctx, sqlMyMembership, roomID, userID).Scan(&mine); err != nil && err != sql.ErrNoRows {
			return err
		}
		members, err := queryStrings(ctx, tx, sqlJoinedUsers, roomID)
		if err != nil {
			return err
		}
		for _, m := range members {
			if m == userID {
				continue
			}
			if mine.String == spec.Join {
				joined[m] = true
			} else {
				gone[m] = true
			}
		}
	}
	// Others joining or leaving the rooms the user is in: only rooms whose
	// state changed in the window can have any (roompositions.go).
	if in == nil {
		var err error
		if in, err = joinedRooms(ctx, tx, userID, to); err != nil {
			return err
		}
	}
	for roomID := range in {
		latest, err := s.consumer.latest.latestState(ctx, tx, roomID)
		if err != nil {
			return err
		}
		if latest <= from {
			continue
		}
		if err := memberChangesInRoom(ctx, tx, roomID, userID, from, to, check, gone); err != nil {
			return err
		}
	}
	return nil
}

// memberChangesInRoom adds the room's members who joined in (from, to]
// to check, and those who left to gone.
func memberChangesInRoom(ctx context.Context, tx *sql.Tx, roomID, userID string, from, to int64, check, gone map[string]bool) error {
	rows, err := tx.QueryContext(ctx, sqlMemberChangesInRoom, roomID, from, to)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var member string
		var membership sql.NullString
		if err := rows.Scan(&member, &membership); err != nil {
			return err
		}
		if member == userID {
			continue
		}
		if membership.String == spec.Join {
			check[member] = true // and maybe gone again since
		} else {
			gone[member] = true
		}
	}
	return rows.Err()
}

// sharing answers whether users share a room with one user: one by one
// for a few, from the whole list of room-mates for many.
type sharing struct {
	tx     *sql.Tx
	userID string
	mates  map[string]bool // nil: ask one by one
}

func newSharing(ctx context.Context, tx *sql.Tx, userID string, candidates int) (*sharing, error) {
	s := &sharing{tx: tx, userID: userID}
	if candidates > manyCandidates {
		mates, err := queryStrings(ctx, tx, sqlRoomPeers, userID)
		if err != nil {
			return nil, err
		}
		s.mates = make(map[string]bool, len(mates))
		for _, m := range mates {
			s.mates[m] = true
		}
	}
	return s, nil
}

func (s *sharing) shares(ctx context.Context, other string) (bool, error) {
	if other == s.userID {
		return true, nil
	}
	if s.mates != nil {
		return s.mates[other], nil
	}
	var one int
	err := s.tx.QueryRowContext(ctx, sqlSharesRoom, s.userID, other).Scan(&one)
	if err == sql.ErrNoRows {
		return false, nil
	}
	return err == nil, err
}

func queryStrings(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// startKeys follows the device list stream and wakes the syncs of the
// users whose lists changed and of everyone sharing a room with them.
func (s *SyncAPI) startKeys(ctx context.Context) {
	if s.keys == nil {
		return
	}
	pos := s.keys.DeviceListPosition()
	log := logrus.WithField("component", "syncapi.devicelists")
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.keys.DeviceListNotify(pos):
			}
			now := s.keys.DeviceListPosition()
			if err := s.wakeDeviceListChanges(ctx, pos, now); err != nil {
				if ctx.Err() != nil {
					return
				}
				log.WithError(err).Warn("cannot wake syncs for device list changes; retrying")
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				continue
			}
			pos = now
		}
	}()
}

func (s *SyncAPI) wakeDeviceListChanges(ctx context.Context, from, to int64) error {
	users, err := s.keys.DeviceListChanges(ctx, from, to)
	if err != nil {
		return err
	}
	woken := map[string]bool{}
	for _, u := range users {
		woken[u] = true
		mates, err := queryStrings(ctx, s.db.Reader(), sqlRoomPeers, u)
		if err != nil {
			return err
		}
		for _, m := range mates {
			woken[m] = true
		}
	}
	for u := range woken {
		s.notifier.wake(u)
	}
	return nil
}
