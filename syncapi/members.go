package syncapi

import (
	"context"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// localMembers keeps, per room, the set of this server's users who are
// joined, so that each event wakes its room's listeners (and finds the
// users push rules are evaluated for) without reading every member row:
// reading them per event made big rooms quadratic. Rooms are loaded on
// first use and then kept in step by the consumer, which is the only
// writer of the membership it mirrors.
type localMembers struct {
	db     *storage.DB
	suffix string // ":" + server name

	mu    sync.Mutex
	rooms map[string]map[string]struct{}
	// gens count each room's changes, so that a load that raced with a
	// change is not kept.
	gens map[string]uint64
}

func newLocalMembers(db *storage.DB, serverName string) *localMembers {
	return &localMembers{db: db, suffix: ":" + serverName,
		rooms: map[string]map[string]struct{}{}, gens: map[string]uint64{}}
}

func (m *localMembers) isLocal(userID string) bool {
	return strings.HasPrefix(userID, "@") && strings.HasSuffix(userID, m.suffix)
}

// joined returns the room's joined local users.
func (m *localMembers) joined(ctx context.Context, roomID string) ([]string, error) {
	m.mu.Lock()
	set, ok := m.rooms[roomID]
	gen := m.gens[roomID]
	if ok {
		users := make([]string, 0, len(set))
		for u := range set {
			users = append(users, u)
		}
		m.mu.Unlock()
		return users, nil
	}
	m.mu.Unlock()

	rows, err := m.db.Reader().QueryContext(ctx, sqlJoinedUsers, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var users []string
	set = map[string]struct{}{}
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		if m.isLocal(u) {
			users = append(users, u)
			set[u] = struct{}{}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.gens[roomID] == gen {
		m.rooms[roomID] = set
	}
	m.mu.Unlock()
	return users, nil
}

// simpleMembershipChange reports whether the event changes the room's
// state by itself alone: then its own membership, if any, is the only
// change to the member set. Anything else (state resolution after a
// fork, a state reset) may move several members at once.
func simpleMembershipChange(out rsapi.OutputEvent) bool {
	return len(out.AddsState) == 0 || (len(out.AddsState) == 1 && out.AddsState[0] == out.Event.EventID())
}

// applied brings the cache in step with an event once it is stored.
func (m *localMembers) applied(out rsapi.OutputEvent) {
	ev := out.Event
	isMember := ev.Type() == spec.MRoomMember && ev.StateKey() != nil
	if len(out.AddsState) == 0 && len(out.RemovesState) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gens[out.RoomID]++
	if !simpleMembershipChange(out) {
		delete(m.rooms, out.RoomID)
		return
	}
	if !isMember || !m.isLocal(*ev.StateKey()) {
		return
	}
	set, ok := m.rooms[out.RoomID]
	if !ok {
		return
	}
	if membership, _ := ev.Membership(); membership == spec.Join {
		set[*ev.StateKey()] = struct{}{}
	} else {
		delete(set, *ev.StateKey())
	}
}

// joinedAfter returns the room's joined local users as they will be once
// the event is stored, for a simple membership change (see
// simpleMembershipChange); ok is false otherwise.
func (m *localMembers) joinedAfter(ctx context.Context, out rsapi.OutputEvent) (users []string, ok bool, err error) {
	if !simpleMembershipChange(out) {
		return nil, false, nil
	}
	users, err = m.joined(ctx, out.RoomID)
	if err != nil {
		return nil, false, err
	}
	ev := out.Event
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || len(out.AddsState) == 0 || !m.isLocal(*ev.StateKey()) {
		return users, true, nil
	}
	target := *ev.StateKey()
	kept := users[:0]
	for _, u := range users {
		if u != target {
			kept = append(kept, u)
		}
	}
	if membership, _ := ev.Membership(); membership == spec.Join {
		kept = append(kept, target)
	}
	return kept, true, nil
}
