package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/gorilla/mux"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/pushrules"
)

// Push rules (GET/PUT/DELETE /pushrules/...) are stored as the user's
// m.push_rules account data, the whole ruleset merged with the server
// defaults (package pushrules), through the accounts API; clients cannot
// write that type through the account data API (accountdata.go), so these
// endpoints are the only way in. After a change the user's syncs are woken
// (the new m.push_rules comes down in account data) and the sync API, which
// evaluates rules for every event, drops its compiled copy.

// PushStore is what the push endpoints need from the sync API, which
// records notifications and keeps pushers (pushers.go). It is the sync API
// given as Deps.Waker: without one that implements it, rule edits still
// work but pushers and /notifications answer M_UNRECOGNIZED.
type PushStore interface {
	// PushRulesChanged drops the user's compiled rules.
	PushRulesChanged(userID string)
	// Notifications returns the body of GET /notifications: notifications
	// before stream position from (0: the newest), at most limit.
	Notifications(ctx context.Context, userID string, from int64, limit int, onlyHighlight bool) (json.RawMessage, error)
	Pushers(ctx context.Context, userID string) ([]pushrules.Pusher, error)
	// SetPusher fails with pushrules.ErrTooManyPushers.
	SetPusher(ctx context.Context, p pushrules.Pusher, appendPusher bool) error
	DeletePusher(ctx context.Context, userID, appID, pushKey string) error
	// DeleteDevicePushers and DeletePushersExcept remove the pushers of
	// deleted devices (pushers_devices.go).
	DeleteDevicePushers(ctx context.Context, userID string, deviceIDs []string) error
	DeletePushersExcept(ctx context.Context, userID, exceptDeviceID string) error
}

// pushStore is the sync API's push side, nil without it.
func (a *API) pushStore() PushStore { return a.push }

// maxPushRulesSize bounds the stored ruleset.
const maxPushRulesSize = 1 << 20

// registerPushRoutes adds push rules, pushers and notifications.
func (a *API) registerPushRoutes(r *router) {
	// One route for the whole tree: its paths are parsed here, so that
	// every malformed one (no scope, no kind, an unknown attribute) gets a
	// 400, and a rule ID may hold an escaped slash.
	r.authed(v3, "/pushrules/{path:.*}", a.pushRules, http.MethodGet, http.MethodPut, http.MethodDelete)
	r.authed(v3, "/pushers", a.getPushers, http.MethodGet)
	r.authed(v3, "/pushers/set", a.setPusher, http.MethodPost)
	r.authed(v3, "/notifications", a.getNotifications, http.MethodGet)
}

// pushRules serves /pushrules/{scope}/{kind}/{ruleId}[/{attr}] and the
// listings at /pushrules/, /pushrules/global/ and /pushrules/global/{kind}/.
func (a *API) pushRules(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	segs := strings.Split(mux.Vars(r)["path"], "/")
	for i, seg := range segs {
		u, err := url.PathUnescape(seg)
		if err != nil {
			return httputil.InvalidParam("Malformed push rule path")
		}
		segs[i] = u
	}
	get := r.Method == http.MethodGet
	if len(segs) == 1 && segs[0] == "" {
		if !get {
			return httputil.InvalidParam("A push rule scope is required")
		}
		return a.writePushRules(w, r, s, func(rs pushrules.Ruleset) any { return pushrules.Rules{Global: rs} })
	}
	if segs[0] != "global" {
		return httputil.InvalidParam("Unknown push rule scope %q", segs[0])
	}
	if len(segs) == 1 {
		return httputil.InvalidParam("A push rule scope is followed by a slash")
	}
	if len(segs) == 2 && segs[1] == "" {
		if !get {
			return httputil.InvalidParam("A push rule kind is required")
		}
		return a.writePushRules(w, r, s, func(rs pushrules.Ruleset) any { return rs })
	}
	kind, ok := pushrules.ParseKind(segs[1])
	if !ok {
		return httputil.InvalidParam("Unknown push rule kind %q", segs[1])
	}
	if len(segs) == 2 {
		return httputil.InvalidParam("A push rule kind is followed by a slash")
	}
	ruleID := segs[2]
	if ruleID == "" {
		if len(segs) > 3 || !get {
			return httputil.InvalidParam("A push rule ID is required")
		}
		return a.writePushRules(w, r, s, func(rs pushrules.Ruleset) any { return *rs.List(kind) })
	}
	if len(segs) == 3 {
		switch r.Method {
		case http.MethodGet:
			return a.writePushRule(w, r, s, kind, ruleID, func(rule pushrules.Rule) any { return rule })
		case http.MethodPut:
			return a.putPushRule(w, r, s, kind, ruleID)
		default:
			return a.editPushRules(w, r, s, func(rs *pushrules.Ruleset) error { return rs.Delete(kind, ruleID) })
		}
	}
	if len(segs) > 4 {
		return httputil.InvalidParam("Unknown push rule attribute")
	}
	switch attr := segs[3]; {
	case attr == "enabled" && get:
		return a.writePushRule(w, r, s, kind, ruleID, func(rule pushrules.Rule) any { return map[string]bool{"enabled": rule.Enabled} })
	case attr == "actions" && get:
		return a.writePushRule(w, r, s, kind, ruleID, func(rule pushrules.Rule) any {
			return map[string][]json.RawMessage{"actions": rule.Actions}
		})
	case attr == "enabled" && r.Method == http.MethodPut:
		var body struct {
			Enabled *bool `json:"enabled"`
		}
		if err := httputil.ReadJSON(r, &body); err != nil {
			return err
		}
		if body.Enabled == nil {
			return httputil.MissingParam("enabled is required")
		}
		return a.editPushRules(w, r, s, func(rs *pushrules.Ruleset) error { return rs.SetEnabled(kind, ruleID, *body.Enabled) })
	case attr == "actions" && r.Method == http.MethodPut:
		var body map[string]json.RawMessage
		if err := httputil.ReadJSON(r, &body); err != nil {
			return err
		}
		raw, ok := body["actions"]
		if !ok {
			return httputil.MissingParam("actions is required")
		}
		actions, err := pushrules.ParseActions(raw)
		if err != nil {
			return pushRuleError(err)
		}
		return a.editPushRules(w, r, s, func(rs *pushrules.Ruleset) error { return rs.SetActions(kind, ruleID, actions) })
	case attr == "enabled" || attr == "actions":
		return httputil.MethodNotAllowed()
	default:
		return httputil.InvalidParam("Unknown push rule attribute %q", attr)
	}
}

// loadPushRules reads the user's rules merged with the defaults.
func (a *API) loadPushRules(ctx context.Context, s *accounts.Session) (pushrules.Ruleset, error) {
	userID := a.userID(s.Localpart)
	raw, err := a.accounts.AccountData(ctx, s.Localpart, "", pushrules.AccountDataType)
	if err != nil && !errors.Is(err, accounts.ErrNotFound) {
		return pushrules.Ruleset{}, err
	}
	rs, err := pushrules.Load(raw, userID)
	if err != nil {
		httputil.LoggerFromContext(ctx).WithError(err).Warn("stored push rules unreadable; using the defaults")
	}
	return rs, nil
}

func (a *API) writePushRules(w http.ResponseWriter, r *http.Request, s *accounts.Session, pick func(pushrules.Ruleset) any) error {
	rs, err := a.loadPushRules(r.Context(), s)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, pick(rs))
	return nil
}

func (a *API) writePushRule(w http.ResponseWriter, r *http.Request, s *accounts.Session, kind pushrules.Kind, ruleID string,
	pick func(pushrules.Rule) any) error {
	rs, err := a.loadPushRules(r.Context(), s)
	if err != nil {
		return err
	}
	rule := rs.Find(kind, ruleID)
	if rule == nil {
		return httputil.NotFound("The push rule was not found")
	}
	httputil.WriteJSON(w, http.StatusOK, pick(*rule))
	return nil
}

func (a *API) putPushRule(w http.ResponseWriter, r *http.Request, s *accounts.Session, kind pushrules.Kind, ruleID string) error {
	if err := pushrules.ValidateRuleID(ruleID); err != nil {
		return pushRuleError(err)
	}
	var body map[string]json.RawMessage
	if err := httputil.ReadJSON(r, &body); err != nil {
		return err
	}
	rule, err := pushrules.ParseRule(kind, ruleID, body)
	if err != nil {
		return pushRuleError(err)
	}
	q := r.URL.Query()
	before, after := q.Get("before"), q.Get("after")
	return a.editPushRules(w, r, s, func(rs *pushrules.Ruleset) error { return rs.Put(kind, rule, before, after) })
}

// editPushRules changes the user's stored rules under their lock, then
// wakes their syncs and has the sync API recompile.
func (a *API) editPushRules(w http.ResponseWriter, r *http.Request, s *accounts.Session, edit func(*pushrules.Ruleset) error) error {
	if s.IsGuest {
		return httputil.GuestForbidden("Guests cannot change push rules")
	}
	ctx := r.Context()
	userID := a.userID(s.Localpart)
	unlock := pushrules.LockUser(userID)
	defer unlock()
	rs, err := a.loadPushRules(ctx, s)
	if err != nil {
		return err
	}
	if err := edit(&rs); err != nil {
		return pushRuleError(err)
	}
	content, err := pushrules.Encode(rs)
	if err != nil {
		return err
	}
	if len(content) > maxPushRulesSize {
		return httputil.TooLarge("Push rules would exceed %d bytes", maxPushRulesSize)
	}
	if _, err := a.accounts.PutAccountData(ctx, s.Localpart, "", pushrules.AccountDataType, content); err != nil {
		return err
	}
	if p := a.pushStore(); p != nil {
		p.PushRulesChanged(userID)
	}
	if a.waker != nil {
		a.waker.WakeUser(userID)
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// pushRuleError maps the pushrules package's errors to Matrix errors.
func pushRuleError(err error) error {
	var rel *pushrules.RelativeError
	switch {
	case errors.Is(err, pushrules.ErrMissing):
		return httputil.MissingParam("%s", err)
	case errors.Is(err, pushrules.ErrWrongType):
		return httputil.BadJSON("%s", err)
	case errors.Is(err, pushrules.ErrInvalid), errors.Is(err, pushrules.ErrReservedID):
		return httputil.InvalidParam("%s", err)
	case errors.Is(err, pushrules.ErrNotFound):
		return httputil.NotFound("The push rule was not found")
	case errors.Is(err, pushrules.ErrDefaultRule), errors.Is(err, pushrules.ErrTooManyRules), errors.As(err, &rel):
		return httputil.BadRequest("%s", err)
	}
	return err
}
