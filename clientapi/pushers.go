package clientapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/pushrules"
)

// Pushers (GET /pushers, POST /pushers/set) are validated here and kept
// by the sync API (PushStore), which sends notifications to http pushers'
// gateways (syncapi/pushgateway.go).

// Limits on pusher fields beyond the spec's own (pushrules.MaxPushKeyLength,
// pushrules.MaxAppIDLength).
const (
	maxPusherStringLength = 512
	maxPusherDataSize     = 8 << 10
	// pushGatewayPath is the path the spec requires of an http pusher's URL.
	pushGatewayPath = "/_matrix/push/v1/notify"
)

// Notification page sizes.
const (
	defaultNotificationsLimit = 20
	maxNotificationsLimit     = 100
)

func (a *API) requirePushStore(s *accounts.Session) (PushStore, error) {
	p := a.pushStore()
	if p == nil {
		return nil, httputil.Unrecognized("Push notifications are not available on this server")
	}
	if s.IsGuest {
		return nil, httputil.GuestForbidden("Guests cannot use push notifications")
	}
	return p, nil
}

func (a *API) getPushers(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	p, err := a.requirePushStore(s)
	if err != nil {
		return err
	}
	pushers, err := p.Pushers(r.Context(), a.userID(s.Localpart))
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"pushers": pushers})
	return nil
}

func (a *API) setPusher(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	store, err := a.requirePushStore(s)
	if err != nil {
		return err
	}
	var body map[string]json.RawMessage
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	var missing []string
	str := func(field string) (string, error) {
		raw, ok := body[field]
		if !ok || string(raw) == "null" {
			missing = append(missing, field)
			return "", nil
		}
		var v string
		if json.Unmarshal(raw, &v) != nil {
			return "", httputil.BadJSON("%s must be a string", field)
		}
		if len(v) > maxPusherStringLength || !validStoredString(v) {
			return "", httputil.InvalidParam("%s must be UTF-8 text of at most %d bytes", field, maxPusherStringLength)
		}
		return v, nil
	}
	// kind, app_id and pushkey are always required; kind null deletes.
	rawKind, hasKind := body["kind"]
	if !hasKind {
		missing = append(missing, "kind")
	}
	p := pushrules.Pusher{UserID: a.userID(s.Localpart), DeviceID: s.DeviceID}
	if p.AppID, err = str("app_id"); err != nil {
		return err
	}
	if p.PushKey, err = str("pushkey"); err != nil {
		return err
	}
	if len(missing) > 0 {
		return httputil.MissingParam("Missing parameters: %s", strings.Join(missing, ", "))
	}
	if p.AppID == "" || utf8.RuneCountInString(p.AppID) > pushrules.MaxAppIDLength {
		return httputil.InvalidParam("app_id must be 1 to %d characters", pushrules.MaxAppIDLength)
	}
	if p.PushKey == "" || len(p.PushKey) > pushrules.MaxPushKeyLength {
		return httputil.InvalidParam("pushkey must be 1 to %d bytes", pushrules.MaxPushKeyLength)
	}
	ctx := r.Context()
	if string(rawKind) == "null" {
		if err := store.DeletePusher(ctx, p.UserID, p.AppID, p.PushKey); err != nil {
			return err
		}
		httputil.WriteJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	if json.Unmarshal(rawKind, &p.Kind) != nil {
		return httputil.BadJSON("kind must be a string or null")
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"app_display_name", &p.AppDisplayName}, {"device_display_name", &p.DeviceDisplayName}, {"lang", &p.Lang}} {
		if *f.dst, err = str(f.name); err != nil {
			return err
		}
	}
	data, hasData := body["data"]
	if !hasData || string(data) == "null" {
		missing = append(missing, "data")
	}
	if len(missing) > 0 {
		return httputil.MissingParam("Missing parameters: %s", strings.Join(missing, ", "))
	}
	if raw, ok := body["profile_tag"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &p.ProfileTag) != nil {
			return httputil.BadJSON("profile_tag must be a string")
		}
		if len(p.ProfileTag) > maxPusherStringLength || !validStoredString(p.ProfileTag) {
			return httputil.InvalidParam("profile_tag must be UTF-8 text of at most %d bytes", maxPusherStringLength)
		}
	}
	appendPusher := false
	if raw, ok := body["append"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &appendPusher) != nil {
			return httputil.BadJSON("append must be a boolean")
		}
	}
	var dataObj map[string]json.RawMessage
	if json.Unmarshal(data, &dataObj) != nil || dataObj == nil {
		return httputil.BadJSON("data must be an object")
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err != nil || compact.Len() > maxPusherDataSize {
		return httputil.InvalidParam("data must be a JSON object of at most %d bytes", maxPusherDataSize)
	}
	p.Data = compact.Bytes()
	switch p.Kind {
	case "http":
		if err := checkGatewayURL(dataObj["url"]); err != nil {
			return err
		}
	case "email":
		if p.AppID != "m.email" {
			return httputil.InvalidParam("An email pusher's app_id is m.email")
		}
		if at := strings.LastIndexByte(p.PushKey, '@'); at <= 0 || at == len(p.PushKey)-1 {
			return httputil.InvalidParam("An email pusher's pushkey is an email address")
		}
	default:
		return httputil.InvalidParam("Unknown pusher kind %q", p.Kind)
	}
	if err := store.SetPusher(ctx, p, appendPusher); err != nil {
		if errors.Is(err, pushrules.ErrTooManyPushers) {
			return httputil.BadRequest("At most %d pushers per user", pushrules.MaxPushersPerUser)
		}
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// checkGatewayURL checks an http pusher's data.url: an absolute http(s)
// URL whose path is the push gateway API's. Plain http is accepted for
// gateways on the same machine or network (tests use them); the spec asks
// clients for https.
func checkGatewayURL(raw json.RawMessage) error {
	if raw == nil || string(raw) == "null" {
		return httputil.MissingParam("An http pusher needs data.url")
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return httputil.BadJSON("data.url must be a string")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return httputil.InvalidParam("data.url must be an absolute https URL")
	}
	if u.Path != pushGatewayPath {
		return httputil.InvalidParam("data.url must have the path %s", pushGatewayPath)
	}
	return nil
}

func (a *API) getNotifications(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	store, err := a.requirePushStore(s)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var from int64
	if v := q.Get("from"); v != "" {
		if from, err = strconv.ParseInt(v, 10, 64); err != nil || from <= 0 {
			return httputil.InvalidParam("from is not a token from this server")
		}
	}
	limit := defaultNotificationsLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return httputil.InvalidParam("limit must be a positive integer")
		}
		limit = min(n, maxNotificationsLimit)
	}
	page, err := store.Notifications(r.Context(), a.userID(s.Localpart), from, limit, q.Get("only") == "highlight")
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, page)
	return nil
}
