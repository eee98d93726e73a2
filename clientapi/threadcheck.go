package clientapi

import (
	"errors"
	"net/http"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// checkThreadRoot refuses to start a thread off an event that itself
// relates to another (the spec's "Validation of m.thread relationships":
// 400 M_UNKNOWN, for lack of a dedicated code). An unknown root is left
// to the relation rules, which ignore it.
func (a *API) checkThreadRoot(r *http.Request, roomID string, content []byte) error {
	rel := gjson.GetBytes(content, `m\.relates_to`)
	if rel.Get("rel_type").String() != "m.thread" {
		return nil
	}
	rootID := rel.Get("event_id").String()
	if rootID == "" {
		return nil
	}
	root, err := a.rooms.Event(r.Context(), rootID)
	if errors.Is(err, rsapi.ErrEventNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if root.RoomID().String() == roomID && gjson.GetBytes(root.Content(), `m\.relates_to`).Exists() {
		return httputil.BadRequest("Cannot start a thread from an event that relates to another")
	}
	return nil
}
