package searchapi

import (
	"encoding/base64"
	"encoding/json"
	"strconv"

	"github.com/plexus-chat/plexus/internal/eventfilter"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// Limits and defaults of a search request.
const (
	defaultResultLimit  = 10
	maxResultLimit      = 100
	defaultContextLimit = 5
	maxContextLimit     = 50
)

// request is a checked room_events search.
type request struct {
	words     []string
	keys      []string
	filter    *eventfilter.RoomEventFilter
	limit     int
	byRecent  bool
	context   *contextRequest
	withState bool
	groupBy   []string // "room_id", "sender"
	// From next_batch: how many candidates earlier pages looked at (rank
	// order), or the position below which to go on (recent order; 0 for
	// the first page).
	offset    int
	beforePos int64
}

type contextRequest struct {
	before, after  int
	includeProfile bool
}

// The body as sent; pointers and raw fields tell absent from wrong.
type searchBody struct {
	SearchCategories *struct {
		RoomEvents *roomEventsBody `json:"room_events"`
	} `json:"search_categories"`
}

type roomEventsBody struct {
	SearchTerm   *string         `json:"search_term"`
	Keys         []string        `json:"keys"`
	Filter       json.RawMessage `json:"filter"`
	OrderBy      string          `json:"order_by"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	IncludeState bool `json:"include_state"`
	Groupings    *struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

// parseRequest checks a search body. It returns nil without error when
// the body asks for no category this server knows (unknown categories
// are ignored, as the spec allows).
func parseRequest(data []byte, nextBatch string) (*request, error) {
	var body searchBody
	if err := httputil.DecodeJSONObject(data, &body); err != nil {
		return nil, err
	}
	if body.SearchCategories == nil {
		return nil, httputil.BadJSON("search_categories is required")
	}
	re := body.SearchCategories.RoomEvents
	if re == nil {
		return nil, nil
	}
	if re.SearchTerm == nil {
		return nil, httputil.BadJSON("room_events.search_term is required")
	}
	if len(*re.SearchTerm) > maxSearchTermLength {
		return nil, httputil.InvalidParam("search_term is longer than %d bytes", maxSearchTermLength)
	}
	req := &request{words: searchWords(*re.SearchTerm), limit: defaultResultLimit}
	req.keys = []string{keyBody, keyName, keyTopic}
	if re.Keys != nil {
		req.keys = nil
		seen := map[string]bool{}
		for _, k := range re.Keys {
			if k != keyBody && k != keyName && k != keyTopic {
				return nil, httputil.InvalidParam("keys: %q is not one of content.body, content.name, content.topic", k)
			}
			if !seen[k] {
				seen[k] = true
				req.keys = append(req.keys, k)
			}
		}
	}
	if len(re.Filter) > 0 && string(re.Filter) != "null" {
		f, err := eventfilter.ParseRoomEventFilter(re.Filter)
		if err != nil {
			return nil, httputil.BadJSON("filter: %v", err)
		}
		req.filter = f
		if f.Limit > 0 {
			req.limit = min(f.Limit, maxResultLimit)
		}
	}
	switch re.OrderBy {
	case "", "rank":
	case "recent":
		req.byRecent = true
	default:
		return nil, httputil.InvalidParam(`order_by must be "rank" or "recent"`)
	}
	if ec := re.EventContext; ec != nil {
		c := &contextRequest{before: defaultContextLimit, after: defaultContextLimit, includeProfile: ec.IncludeProfile}
		if ec.BeforeLimit != nil {
			c.before = *ec.BeforeLimit
		}
		if ec.AfterLimit != nil {
			c.after = *ec.AfterLimit
		}
		if c.before < 0 || c.after < 0 {
			return nil, httputil.InvalidParam("event_context limits must not be negative")
		}
		c.before, c.after = min(c.before, maxContextLimit), min(c.after, maxContextLimit)
		req.context = c
	}
	req.withState = re.IncludeState
	if re.Groupings != nil {
		for _, g := range re.Groupings.GroupBy {
			if g.Key != "room_id" && g.Key != "sender" {
				return nil, httputil.InvalidParam(`groupings: key must be "room_id" or "sender"`)
			}
			req.groupBy = append(req.groupBy, g.Key)
		}
	}
	if nextBatch != "" {
		kind, n, err := parseBatchToken(nextBatch)
		if err != nil {
			return nil, err
		}
		switch {
		case kind == 'o' && !req.byRecent && n <= maxOffset:
			req.offset = int(n)
		case kind == 'p' && req.byRecent && n > 0:
			req.beforePos = n
		default:
			return nil, httputil.InvalidParam("next_batch belongs to another search")
		}
	}
	return req, nil
}

// maxOffset bounds how deep rank-ordered paging may go, so a token
// cannot ask for an unbounded scan.
const maxOffset = 100000

// A next_batch token is opaque to clients. Ordered by rank, it holds how
// many candidates earlier pages looked at ("o" and a count): ranks are
// not unique, so paging goes by offset. Ordered by recency, it holds the
// stream position of the last candidate looked at ("p" and a position),
// which stays right while new events arrive.
func batchToken(kind byte, n int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(string(kind) + strconv.FormatInt(n, 10)))
}

func parseBatchToken(tok string) (byte, int64, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil && len(raw) > 1 && (raw[0] == 'o' || raw[0] == 'p') {
		if n, err := strconv.ParseInt(string(raw[1:]), 10, 64); err == nil && n >= 0 {
			return raw[0], n, nil
		}
	}
	return 0, 0, httputil.InvalidParam("next_batch is not a token from this server")
}
