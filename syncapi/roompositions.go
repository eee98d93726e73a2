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
// It also remembers the newest event of each room that changed its current
// state, so that a sync looks for others' joins and leaves (the device
// list part, keys.go) and recounts the room summary only in rooms whose
// state changed.
type roomPositions struct {
	mu    sync.Mutex
	pos   map[string]int64
	state map[string]int64
}

func newRoomPositions() *roomPositions {
	return &roomPositions{pos: map[string]int64{}, state: map[string]int64{}}
}

// advance records an event at pos in the room (one that changed the
// room's current state when stateChanged is true); call it before the
// event becomes visible to syncs.
func (r *roomPositions) advance(roomID string, pos int64, stateChanged bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pos > r.pos[roomID] {
		r.pos[roomID] = pos
	}
	if stateChanged && pos > r.state[roomID] {
		r.state[roomID] = pos
	}
}

// latestState returns the position of the room's newest event that
// changed its current state, reading it the first time a room is asked
// for (after a start).
func (r *roomPositions) latestState(ctx context.Context, tx *sql.Tx, roomID string) (int64, error) {
	return r.known(ctx, tx, r.state, roomID, `SELECT COALESCE(MAX(pos), 0) FROM syncapi_events
		WHERE room_id = $1 AND (adds_state <> '[]' OR removes_state <> '[]')`)
}

// latest returns the room's newest event position, reading it from the
// sync API's events the first time a room is asked for (after a start).
func (r *roomPositions) latest(ctx context.Context, tx *sql.Tx, roomID string) (int64, error) {
	return r.known(ctx, tx, r.pos, roomID, `SELECT COALESCE(MAX(pos), 0) FROM syncapi_events WHERE room_id = $1`)
}

// known returns the room's position in m, reading it with query (which
// takes the room ID) when the room is not there yet.
func (r *roomPositions) known(ctx context.Context, tx *sql.Tx, m map[string]int64, roomID, query string) (int64, error) {
	r.mu.Lock()
	pos, ok := m[roomID]
	r.mu.Unlock()
	if ok {
		return pos, nil
	}
	if err := tx.QueryRowContext(ctx, query, roomID).Scan(&pos); err != nil {
		return 0, err
	}
	// An event consumed meanwhile may have advanced the room past what
	// this snapshot saw: keep the larger.
	r.mu.Lock()
	defer r.mu.Unlock()
	if known, ok := m[roomID]; !ok || pos > known {
		m[roomID] = pos
	}
	return m[roomID], nil
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
