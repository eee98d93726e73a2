package clientapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/eventfilter"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// maxFilterIDLength bounds the filter IDs worth looking up: the accounts
// component numbers filters per user.
const maxFilterIDLength = 20

func (a *API) registerFilterRoutes(r *router) {
	r.authed(v3, "/user/{userId}/filter", a.postFilter, http.MethodPost)
	r.authed(v3, "/user/{userId}/filter/{filterId}", a.getFilter, http.MethodGet)
}

func (a *API) postFilter(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if err := a.requireOwnUser(r, s); err != nil {
		return err
	}
	body, err := httputil.ReadBody(r)
	if err != nil {
		return err
	}
	if _, err := eventfilter.Parse(body); err != nil {
		return filterError(err)
	}
	// Store what the client sent, unknown fields included, so that GET
	// gives it back; Parse has checked it is a JSON object in UTF-8.
	var buf bytes.Buffer
	if err := json.Compact(&buf, body); err != nil {
		return httputil.NotJSON("Filter is not a JSON object")
	}
	id, err := a.accounts.PutFilter(r.Context(), s.Localpart, buf.Bytes())
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"filter_id": id})
	return nil
}

// filterError maps an eventfilter.Parse error to a Matrix error.
func filterError(err error) error {
	switch {
	case errors.Is(err, eventfilter.ErrTooLarge):
		return httputil.TooLarge("Filter is larger than %d bytes", eventfilter.MaxSize)
	case errors.Is(err, eventfilter.ErrNotJSON):
		return httputil.NotJSON("Filter is not a JSON object")
	default:
		return httputil.BadJSON("Invalid %v", err)
	}
}

func (a *API) getFilter(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	if err := a.requireOwnUser(r, s); err != nil {
		return err
	}
	id := httputil.Vars(r)["filterId"]
	// Only IDs the accounts component could have made reach the database.
	if len(id) > maxFilterIDLength || !validStoredString(id) {
		return httputil.NotFound("Unknown filter")
	}
	filter, err := a.accounts.Filter(r.Context(), s.Localpart, id)
	if errors.Is(err, accounts.ErrNotFound) {
		return httputil.NotFound("Unknown filter")
	}
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, filter)
	return nil
}
