package clientapi

import (
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// GET /_matrix/client/v1/rooms/{roomId}/hierarchy: the space tree under a
// room, depth first, in pages. Each page's walk (the rooms still to visit
// and those seen) is kept in memory under the next_batch token, bound to
// the user and the request's parameters.

const (
	defaultHierarchyLimit = 20
	maxHierarchyLimit     = 50
	defaultHierarchyDepth = 5
	maxHierarchyDepth     = 10
	// maxHierarchyVisits bounds the rooms one request looks at, shown or
	// not, so that a space of inaccessible rooms cannot make it unbounded.
	maxHierarchyVisits = 200

	hierarchyPageLifetime = 10 * time.Minute
	maxHierarchyPages     = 10000
)

// hierarchyStep is a room still to visit.
type hierarchyStep struct {
	roomID string
	depth  int
	via    []string
}

// hierarchyWalk is where a paginated walk stands.
type hierarchyWalk struct {
	created time.Time
	// The request it belongs to.
	userID, rootID string
	suggestedOnly  bool
	maxDepth       int
	// stack holds the rooms to visit, next first.
	stack []hierarchyStep
	seen  map[string]bool
}

// hierarchyPages holds walks between pages.
type hierarchyPages struct {
	mu    sync.Mutex
	walks map[string]*hierarchyWalk
}

func (p *hierarchyPages) take(token string) *hierarchyWalk {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.walks[token]
	if !ok || time.Since(w.created) > hierarchyPageLifetime {
		delete(p.walks, token)
		return nil
	}
	// A copy, so that repeating a request with the same token works.
	c := *w
	c.stack = slices.Clone(w.stack)
	c.seen = make(map[string]bool, len(w.seen))
	for k := range w.seen {
		c.seen[k] = true
	}
	return &c
}

func (p *hierarchyPages) put(w *hierarchyWalk) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.walks == nil {
		p.walks = map[string]*hierarchyWalk{}
	}
	if len(p.walks) >= maxHierarchyPages {
		for k, old := range p.walks {
			if time.Since(old.created) > hierarchyPageLifetime {
				delete(p.walks, k)
			}
		}
		if len(p.walks) >= maxHierarchyPages {
			p.walks = map[string]*hierarchyWalk{}
		}
	}
	token := randomString(18)
	w.created = time.Now()
	p.walks[token] = w
	return token
}

// spacePages is shared by the API's handlers (one server per process in
// production; tests' servers each see only their own tokens, which are
// random).
var spacePages = &hierarchyPages{}

func (a *API) registerSpaceRoutes(r *router) {
	r.authed(v1, "/rooms/{roomId}/hierarchy", a.hierarchy, http.MethodGet)
}

// intParam reads an integer query parameter within [min, max], def when absent.
func intParam(r *http.Request, name string, def, lowest, highest int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lowest {
		return 0, httputil.InvalidParam("%s must be an integer of at least %d", name, lowest)
	}
	return min(n, highest), nil
}

func (a *API) hierarchy(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	ctx := r.Context()
	rootID := httputil.Vars(r)["roomId"]
	if !validRoomID(rootID) {
		return httputil.InvalidParam("Invalid room ID")
	}
	q := r.URL.Query()
	suggestedOnly := false
	switch q.Get("suggested_only") {
	case "", "false":
	case "true":
		suggestedOnly = true
	default:
		return httputil.InvalidParam("suggested_only must be true or false")
	}
	limit, err := intParam(r, "limit", defaultHierarchyLimit, 1, maxHierarchyLimit)
	if err != nil {
		return err
	}
	maxDepth, err := intParam(r, "max_depth", defaultHierarchyDepth, 0, maxHierarchyDepth)
	if err != nil {
		return err
	}
	userID := a.userID(s.Localpart)
	walk := &hierarchyWalk{userID: userID, rootID: rootID, suggestedOnly: suggestedOnly, maxDepth: maxDepth,
		seen: map[string]bool{}}
	if from := q.Get("from"); from != "" {
		walk = spacePages.take(from)
		if walk == nil || walk.userID != userID || walk.rootID != rootID {
			return httputil.InvalidParam("Unknown or expired from token")
		}
		if walk.suggestedOnly != suggestedOnly || walk.maxDepth != maxDepth {
			return httputil.InvalidParam("suggested_only and max_depth cannot change on paginated requests")
		}
	} else {
		via := []string{}
		if server := roomIDServer(rootID); server != "" {
			via = append(via, server)
		}
		walk.stack = []hierarchyStep{{roomID: rootID, via: via}}
	}
	joined, err := a.joinedRoomSet(ctx, userID)
	if err != nil {
		return err
	}
	remote := newRemoteRooms()
	rooms := []summaryWithChildren{}
	for visits := 0; len(walk.stack) > 0 && len(rooms) < limit && visits < maxHierarchyVisits; visits++ {
		step := walk.stack[0]
		walk.stack = walk.stack[1:]
		if walk.seen[step.roomID] {
			continue // a loop, or a room under two parents
		}
		walk.seen[step.roomID] = true
		room, err := a.findRoom(ctx, step.roomID, step.via, suggestedOnly, remote)
		if err != nil {
			return err
		}
		visible := false
		if room != nil {
			if _, visible, err = a.userMaySee(ctx, room, userID, joined); err != nil {
				return err
			}
		}
		if !visible {
			if step.roomID == rootID {
				return httputil.Forbidden("You cannot view room %s", rootID)
			}
			continue
		}
		children := []rsapi.SpaceChild{}
		if room.RoomType == spec.MSpace {
			for _, c := range room.ChildrenState {
				if !suggestedOnly || c.Suggested() {
					children = append(children, c)
				}
			}
		}
		rooms = append(rooms, summaryWithChildren{RoomSummary: *room, ChildrenState: children})
		if step.depth < maxDepth {
			next := make([]hierarchyStep, 0, len(children))
			for _, c := range children {
				if !walk.seen[c.StateKey] {
					next = append(next, hierarchyStep{roomID: c.StateKey, depth: step.depth + 1, via: c.Via()})
				}
			}
			walk.stack = append(next, walk.stack...)
		}
	}
	walk.stack = slices.DeleteFunc(walk.stack, func(st hierarchyStep) bool { return walk.seen[st.roomID] })
	resp := map[string]any{"rooms": rooms}
	if len(walk.stack) > 0 {
		resp["next_batch"] = spacePages.put(walk)
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}
