package clientapi

import (
	"net/http"
	"sort"
	"strconv"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
)

// Mutual rooms (GET /_matrix/client/v1/mutual_rooms, and the unstable
// MSC2666 path clients used before): the rooms both users are joined to,
// as this server knows them, in pages.

const mutualRoomsPageSize = 100

func (a *API) registerMutualRoomsRoutes(r *router) {
	r.authed(v1, "/mutual_rooms", a.mutualRooms, http.MethodGet)
	r.mux.Handle("/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms",
		a.Authed(a.mutualRooms)).Methods(http.MethodGet)
}

func (a *API) mutualRooms(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	q := r.URL.Query()
	other := q.Get("user_id")
	if other == "" {
		return httputil.MissingParam("user_id is required")
	}
	if _, err := mxid.ParseUserID(other); err != nil {
		return httputil.InvalidParam("user_id is not a valid user ID")
	}
	me := a.userID(s.Localpart)
	if other == me {
		return httputil.InvalidParam("user_id is your own user ID")
	}
	// The token is the offset into the sorted list.
	offset := 0
	if from := q.Get("from"); from != "" {
		n, err := strconv.Atoi(from)
		if err != nil || n < 0 {
			return httputil.InvalidParam("from is not a token this endpoint gave")
		}
		offset = n
	}
	mine, err := a.rooms.Memberships(r.Context(), me)
	if err != nil {
		return err
	}
	theirs, err := a.rooms.Memberships(r.Context(), other)
	if err != nil {
		return err
	}
	joined := map[string]bool{}
	for _, m := range mine {
		if m.Membership == "join" {
			joined[m.RoomID] = true
		}
	}
	shared := []string{}
	for _, m := range theirs {
		if m.Membership == "join" && joined[m.RoomID] {
			shared = append(shared, m.RoomID)
		}
	}
	sort.Strings(shared)
	if offset > len(shared) {
		offset = len(shared)
	}
	end := min(offset+mutualRoomsPageSize, len(shared))
	resp := map[string]any{"joined": shared[offset:end], "count": len(shared)}
	if end < len(shared) {
		resp["next_batch"] = strconv.Itoa(end)
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}
