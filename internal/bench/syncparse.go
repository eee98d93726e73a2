package bench

import (
	"encoding/json"
	"slices"
)

// SyncSummary is what the sync mode reads from a /sync answer.
type SyncSummary struct {
	NextBatch string
	// JoinedRooms is the number of rooms under rooms.join.
	JoinedRooms int
	// TimelineEvents counts the timeline events of all joined rooms.
	TimelineEvents int
	// EventIDs and Bodies are those of the timeline events (Bodies holds
	// content.body where it is a string), in answer order.
	EventIDs, Bodies []string
}

// ParseSync reads a /sync answer.
func ParseSync(raw []byte) (SyncSummary, error) {
	var body struct {
		NextBatch string `json:"next_batch"`
		Rooms     struct {
			Join map[string]struct {
				Timeline struct {
					Events []struct {
						EventID string `json:"event_id"`
						Content struct {
							Body any `json:"body"`
						} `json:"content"`
					} `json:"events"`
				} `json:"timeline"`
			} `json:"join"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return SyncSummary{}, err
	}
	s := SyncSummary{NextBatch: body.NextBatch, JoinedRooms: len(body.Rooms.Join)}
	for _, room := range body.Rooms.Join {
		for _, ev := range room.Timeline.Events {
			s.TimelineEvents++
			s.EventIDs = append(s.EventIDs, ev.EventID)
			if b, ok := ev.Content.Body.(string); ok {
				s.Bodies = append(s.Bodies, b)
			}
		}
	}
	return s, nil
}

// HasBody reports whether a timeline event has this content.body.
func (s SyncSummary) HasBody(body string) bool { return slices.Contains(s.Bodies, body) }

// HasEvent reports whether a timeline event has this ID.
func (s SyncSummary) HasEvent(eventID string) bool { return slices.Contains(s.EventIDs, eventID) }
