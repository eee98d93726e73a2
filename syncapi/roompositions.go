package syncapi

import (
	"context"
	"database/sql"
	"sync"
)

// roomPositions remembers the newest stream position of each room's
// events, so that an incremental sync passes over rooms with nothing new
// without querying them: otherwise every sync of a user in R rooms costs
// two queries per room (timeline and state delta) even when one room, or
// none, changed.
//
// The consumer advances a room before committing its event, so the map is
// never behind what a sync's snapshot can see (at worst ahead, which only
// means a room is looked at for nothing).
//
// It also remembers the newest membership event of each room, so that the
// device list part of a sync (keys.go) looks for others' joins and leaves
// only in rooms that had one.
type roomPositions struct {
	mu     sync.Mutex
	pos    map[string]int64
	member map[string]int64
}

func newRoomPositions() *roomPositions {
	return &roomPositions{pos: map[string]int64{}, member: map[string]int64{}}
}

// advance records an event at pos in the room (a membership event when
// member is true); call it before the event becomes visible to syncs.
func (r *roomPositions) advance(roomID string, pos int64, member bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pos > r.pos[roomID] {
		r.pos[roomID] = pos
	}
	if member && pos > r.member[roomID] {
		r.member[roomID] = pos
	}
}

// latestMember returns the position of the room's newest membership
// event, reading it the first time a room is asked for (after a start).
func (r *roomPositions) latestMember(ctx context.Context, tx *sql.Tx, roomID string) (int64, error) {
	r.mu.Lock()
	pos, ok := r.member[roomID]
	r.mu.Unlock()
	if ok {
		return pos, nil
	}
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(pos), 0) FROM syncapi_events
		WHERE room_id = $1 AND type = 'm.room.member'`, roomID).Scan(&pos); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if known, ok := r.member[roomID]; !ok || pos > known {
		r.member[roomID] = pos
	}
	return r.member[roomID], nil
}

// latest returns the room's newest event position, reading it from the
// sync API's events the first time a room is asked for (after a start).
func (r *roomPositions) latest(ctx context.Context, tx *sql.Tx, roomID string) (int64, error) {
	r.mu.Lock()
	pos, ok := r.pos[roomID]
	r.mu.Unlock()
	if ok {
		return pos, nil
	}
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(pos), 0) FROM syncapi_events WHERE room_id = $1`, roomID).Scan(&pos); err != nil {
		return 0, err
	}
	// An event consumed meanwhile may have advanced the room past what
	// this snapshot saw: keep the larger.
	r.mu.Lock()
	defer r.mu.Unlock()
	if known, ok := r.pos[roomID]; !ok || pos > known {
		r.pos[roomID] = pos
	}
	return r.pos[roomID], nil
}

// quietRoom reports whether a joined room can be left out of an
// incremental sync without looking at it: no event since the client's
// position, no membership change, no room account data and no full state
// asked for.
func (b *builder) quietRoom(ctx context.Context, roomID string, changed bool, roomData map[string][]any) (bool, error) {
	if b.initial || b.req.fullState || changed || len(roomData[roomID]) > 0 {
		return false, nil
	}
	latest, err := b.s.consumer.latest.latest(ctx, b.tx, roomID)
	return latest <= b.since, err
}
