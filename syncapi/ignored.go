package syncapi

import (
	"context"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// dropIgnored leaves out the events sent by users that userID (a local
// user) ignores: /messages and /context must not show them, as /sync
// does not (m.ignored_user_list). Their state events stay, as the spec
// asks, so that the room looks the same to everyone.
func (s *SyncAPI) dropIgnored(ctx context.Context, userID string, events []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error) {
	if len(events) == 0 {
		return events, nil
	}
	localpart := strings.TrimPrefix(userID, "@")
	localpart, _, _ = strings.Cut(localpart, ":")
	ignored, err := s.ignoredUsers(ctx, localpart)
	if err != nil || len(ignored) == 0 {
		return events, err
	}
	kept := events[:0:0]
	for _, ev := range events {
		if ev.StateKey() != nil || !ignored[string(ev.SenderID())] {
			kept = append(kept, ev)
		}
	}
	return kept, nil
}
