package syncapi

import (
	"context"
	"strings"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

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

	mu sync.Mutex
	// rooms maps each loaded room's joined local users to their display
	// name there (for push rules' contains_display_name).
	rooms map[string]map[string]string
	// gens count each room's changes, so that a load that raced with a
	// change is not kept.
	gens map[string]uint64
	// counts are rooms' joined member counts, local or not (push rules'
	// room_member_count), dropped at every membership change.
	counts map[string]int
}

func newLocalMembers(db *storage.DB, serverName string) *localMembers {
	return &localMembers{db: db, suffix: ":" + serverName,
		rooms: map[string]map[string]string{}, gens: map[string]uint64{}, counts: map[string]int{}}
}

func (m *localMembers) isLocal(userID string) bool {
	return strings.HasPrefix(userID, "@") && strings.HasSuffix(userID, m.suffix)
}

// localMember is a joined local user and their display name in the room.
type localMember struct{ userID, displayName string }

// joined returns the room's joined local users.
func (m *localMembers) joined(ctx context.Context, roomID string) ([]string, error) {
	members, err := m.joinedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	users := make([]string, len(members))
	for i, lm := range members {
		users[i] = lm.userID
	}
	return users, nil
}

// joinedMembers returns the room's joined local users with their
// display names.
func (m *localMembers) joinedMembers(ctx context.Context, roomID string) ([]localMember, error) {
	m.mu.Lock()
	set, ok := m.rooms[roomID]
	gen := m.gens[roomID]
	if ok {
		members := make([]localMember, 0, len(set))
		for u, name := range set {
			members = append(members, localMember{u, name})
		}
		m.mu.Unlock()
		return members, nil
	}
	m.mu.Unlock()

	members, err := readLocalMembers(ctx, m.db.Reader(), roomID, m.suffix)
	if err != nil {
		return nil, err
	}
	set = make(map[string]string, len(members))
	for _, lm := range members {
		set[lm.userID] = lm.displayName
	}
	m.mu.Lock()
	if m.gens[roomID] == gen {
		m.rooms[roomID] = set
	}
	m.mu.Unlock()
	return members, nil
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
	if isMember || !simpleMembershipChange(out) {
		delete(m.counts, out.RoomID)
	}
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
		set[*ev.StateKey()] = gjson.GetBytes(ev.Content(), "displayname").String()
	} else {
		delete(set, *ev.StateKey())
	}
}

// joinedAfter returns the room's joined local users, with their display
// names, as they will be once the event is stored, for a simple
// membership change (see simpleMembershipChange); ok is false otherwise.
func (m *localMembers) joinedAfter(ctx context.Context, out rsapi.OutputEvent) (members []localMember, ok bool, err error) {
	if !simpleMembershipChange(out) {
		return nil, false, nil
	}
	members, err = m.joinedMembers(ctx, out.RoomID)
	if err != nil {
		return nil, false, err
	}
	ev := out.Event
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || len(out.AddsState) == 0 || !m.isLocal(*ev.StateKey()) {
		return members, true, nil
	}
	target := *ev.StateKey()
	kept := members[:0]
	for _, lm := range members {
		if lm.userID != target {
			kept = append(kept, lm)
		}
	}
	if membership, _ := ev.Membership(); membership == spec.Join {
		kept = append(kept, localMember{target, gjson.GetBytes(ev.Content(), "displayname").String()})
	}
	return kept, true, nil
}

// memberCount returns the room's joined member count, from load the
// first time. The consumer calls it while storing an event; cacheable
// says the event changes no membership, so that what load reads in the
// consumer's transaction is the committed count. (The consumer is the
// only caller and writer, so no change can slip in between.)
func (m *localMembers) memberCount(roomID string, cacheable bool, load func() (int, error)) (int, error) {
	m.mu.Lock()
	n, ok := m.counts[roomID]
	m.mu.Unlock()
	if ok {
		return n, nil
	}
	n, err := load()
	if err != nil || !cacheable {
		return n, err
	}
	m.mu.Lock()
	m.counts[roomID] = n
	m.mu.Unlock()
	return n, nil
}

// readLocalMembers reads the room's joined local users (suffix is ":" and
// the server name) with their display names from the stored state.
func readLocalMembers(ctx context.Context, q storage.Querier, roomID, suffix string) ([]localMember, error) {
	rows, err := q.QueryContext(ctx, sqlLocalJoinedMembers, roomID, "%"+likeEscape(suffix))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var members []localMember
	for rows.Next() {
		var u, js string
		if err := rows.Scan(&u, &js); err != nil {
			return nil, err
		}
		// LIKE ignores ASCII case in SQLite: keep exact matches only.
		if strings.HasPrefix(u, "@") && strings.HasSuffix(u, suffix) {
			members = append(members, localMember{u, gjson.Get(js, "content.displayname").String()})
		}
	}
	return members, rows.Err()
}
