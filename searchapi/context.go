package searchapi

import (
	"context"
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/clientevent"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/syncapi"
)

// eventContext returns the visible events around a result (events_before
// nearest first, as /context does), tokens for /messages from either end,
// and, when asked, the profiles of their senders as they were at the
// result.
func (s *SearchAPI) eventContext(ctx context.Context, userID string, h hit, c *contextRequest) (map[string]any, error) {
	before, oldest, err := s.around(ctx, userID, h, sqlEventsBefore, c.before)
	if err != nil {
		return nil, err
	}
	after, newest, err := s.around(ctx, userID, h, sqlEventsAfter, c.after)
	if err != nil {
		return nil, err
	}
	start, end := h.pos-1, h.pos
	if oldest > 0 {
		start = oldest - 1
	}
	if newest > 0 {
		end = newest
	}
	out := map[string]any{
		"start":         syncapi.Token{PDU: start}.String(),
		"end":           syncapi.Token{PDU: end}.String(),
		"events_before": clientevent.FormatAll(before, clientevent.Options{}),
		"events_after":  clientevent.FormatAll(after, clientevent.Options{}),
	}
	if c.includeProfile {
		profiles := map[string]any{}
		for _, ev := range append(append([]gomatrixserverlib.PDU{h.event.PDU}, before...), after...) {
			sender := string(ev.SenderID())
			if _, done := profiles[sender]; done {
				continue
			}
			member, err := s.rs.StateEventAt(ctx, h.event.StateBefore, "m.room.member", sender)
			if err != nil {
				return nil, err
			}
			p := map[string]any{}
			if member != nil {
				content := gjson.ParseBytes(member.Content())
				if v := content.Get("displayname"); v.Type == gjson.String {
					p["displayname"] = v.String()
				}
				if v := content.Get("avatar_url"); v.Type == gjson.String {
					p["avatar_url"] = v.String()
				}
			}
			profiles[sender] = p
		}
		out["profile_info"] = profiles
	}
	return out, nil
}

// around reads up to limit events of the result's room before or after
// it (query is sqlEventsBefore or sqlEventsAfter) and keeps those the
// user may see. edge is the position of the farthest one read, 0 when none.
func (s *SearchAPI) around(ctx context.Context, userID string, h hit, query string, limit int) ([]gomatrixserverlib.PDU, int64, error) {
	if limit == 0 {
		return nil, 0, nil
	}
	rows, err := s.db.Reader().QueryContext(ctx, query, h.roomID, h.pos, limit)
	if err != nil {
		return nil, 0, err
	}
	var ids []string
	var edge int64
	for rows.Next() {
		var id string
		if err := rows.Scan(&id, &edge); err != nil {
			rows.Close()
			return nil, 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	var pdus []gomatrixserverlib.PDU
	for _, id := range ids {
		ev, err := s.rs.Event(ctx, id)
		if errors.Is(err, rsapi.ErrEventNotFound) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		pdus = append(pdus, ev.PDU)
	}
	if len(pdus) == 0 {
		return nil, edge, nil
	}
	visible, err := s.rs.VisibleEvents(ctx, userID, pdus)
	return visible, edge, err
}

// roomStates returns, for each room with a result, the state the user
// may read: the current state, or the state when they left.
func (s *SearchAPI) roomStates(ctx context.Context, userID string, hits []hit) (map[string][]clientevent.Event, error) {
	out := map[string][]clientevent.Event{}
	for _, h := range hits {
		if _, done := out[h.roomID]; done {
			continue
		}
		readable, err := s.rs.ReadableState(ctx, h.roomID, userID)
		var notAllowed *rsapi.NotAllowedError
		if errors.As(err, &notAllowed) {
			continue
		}
		if err != nil {
			return nil, err
		}
		state, err := s.rs.StateAt(ctx, readable.Snapshot)
		if err != nil {
			return nil, err
		}
		out[h.roomID] = clientevent.FormatAll(state, clientevent.Options{})
	}
	return out, nil
}
