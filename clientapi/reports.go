package clientapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	"github.com/plexus-chat/plexus/reports"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Reporting content: events (the reporter must be joined to the room and
// able to see the event), rooms (anyone, joined or not) and users (anyone).
// Reports are stored for the admins, who list them at
// GET /_plexus/admin/v1/reports.

const (
	maxReportReason  = 2000 // bytes
	maxReportsListed = 1000
)

// ReportStore keeps reports (package reports).
type ReportStore interface {
	Add(ctx context.Context, r reports.Report) error
	List(ctx context.Context, limit int) ([]reports.Report, error)
}

func (a *API) registerReportRoutes(r *router) {
	if a.reports == nil {
		return
	}
	r.authed(v3, "/rooms/{roomId}/report/{eventId}", a.reportEvent, http.MethodPost)
	r.authed(v3, "/rooms/{roomId}/report", a.reportRoom, http.MethodPost)
	r.authed(v3, "/users/{userId}/report", a.reportUser, http.MethodPost)
}

func (a *API) registerReportAdminRoutes(root *mux.Router) {
	if a.reports == nil {
		return
	}
	root.Handle("/_plexus/admin/v1/reports", a.Authed(a.adminOnly(a.listReports))).Methods(http.MethodGet)
}

// adminOnly refuses users who are not server admins.
func (a *API) adminOnly(h AuthedHandler) AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
		if !s.IsAdmin {
			return httputil.Forbidden("You are not a server admin")
		}
		return h(w, r, s)
	}
}

type reportBody struct {
	Reason *string `json:"reason"`
	Score  *int    `json:"score"`
}

// readReport reads and checks a report's body; reasonRequired for rooms
// and users, where the spec requires the field (it may be blank).
func (a *API) readReport(r *http.Request, s *accounts.Session, reasonRequired bool) (*reportBody, error) {
	// Reports fan out to people: a stricter limit than other endpoints.
	if err := a.authLimit.Check("report:" + s.Localpart); err != nil {
		return nil, err
	}
	var body reportBody
	if err := httputil.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Reason == nil && reasonRequired {
		return nil, httputil.MissingParam("reason is required (it may be blank)")
	}
	if body.Reason == nil {
		body.Reason = new(string)
	}
	if len(*body.Reason) > maxReportReason || !validStoredString(*body.Reason) {
		return nil, httputil.InvalidParam("reason must be UTF-8 text of at most %d bytes", maxReportReason)
	}
	// score was removed in v1.18; older clients still send it.
	if body.Score != nil && (*body.Score < -100 || *body.Score > 0) {
		return nil, httputil.InvalidParam("score must be from -100 to 0")
	}
	return &body, nil
}

func (a *API) reportEvent(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	ctx := r.Context()
	roomID, err := roomParam(r)
	if err != nil {
		return err
	}
	eventID, err := textParam(r, "eventId")
	if err != nil {
		return err
	}
	body, err := a.readReport(r, s, false)
	if err != nil {
		return err
	}
	userID := a.userID(s.Localpart)
	notFound := httputil.NotFound("The event was not found or you are not joined to the room")
	m, err := a.rooms.Membership(ctx, roomID, userID)
	if errors.Is(err, rsapi.ErrRoomNotFound) || (err == nil && m.Membership != "join") {
		return notFound
	}
	if err != nil {
		return err
	}
	ev, err := a.rooms.Event(ctx, eventID)
	if errors.Is(err, rsapi.ErrEventNotFound) {
		return notFound
	}
	if err != nil {
		return roomError(err)
	}
	if ev.RoomID().String() != roomID {
		return notFound
	}
	visible, err := a.rooms.VisibleEvents(ctx, userID, []gomatrixserverlib.PDU{ev.PDU})
	if err != nil {
		return err
	}
	if len(visible) == 0 {
		return notFound
	}
	return a.storeReport(w, r, reports.Report{Kind: reports.KindEvent, Reporter: userID, RoomID: roomID,
		EventID: eventID, UserID: string(ev.SenderID()), Reason: *body.Reason, Score: body.Score})
}

func (a *API) reportRoom(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, err := roomParam(r)
	if err != nil {
		return err
	}
	body, err := a.readReport(r, s, true)
	if err != nil {
		return err
	}
	if _, err := a.rooms.RoomVersion(r.Context(), roomID); errors.Is(err, rsapi.ErrRoomNotFound) {
		return httputil.NotFound("The room was not found")
	} else if err != nil {
		return err
	}
	return a.storeReport(w, r, reports.Report{Kind: reports.KindRoom, Reporter: a.userID(s.Localpart), RoomID: roomID,
		Reason: *body.Reason})
}

func (a *API) reportUser(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	target := httputil.Vars(r)["userId"]
	uid, err := mxid.ParseUserID(target)
	if err != nil {
		return httputil.InvalidParam("Invalid user ID")
	}
	body, err := a.readReport(r, s, true)
	if err != nil {
		return err
	}
	// Only our own users can be looked up; others are taken on trust.
	if uid.Server == a.cfg.ServerName {
		if _, err := a.accounts.Account(r.Context(), uid.Localpart); errors.Is(err, accounts.ErrNotFound) {
			return httputil.NotFound("The user was not found")
		} else if err != nil {
			return err
		}
	}
	return a.storeReport(w, r, reports.Report{Kind: reports.KindUser, Reporter: a.userID(s.Localpart), UserID: target,
		Reason: *body.Reason})
}

func (a *API) storeReport(w http.ResponseWriter, r *http.Request, rep reports.Report) error {
	if err := a.reports.Add(r.Context(), rep); err != nil {
		return err
	}
	httputil.LoggerFrom(r).WithField("kind", rep.Kind).Info("content reported")
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// listReports serves GET /_plexus/admin/v1/reports?limit=n, newest first.
func (a *API) listReports(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return httputil.InvalidParam("limit must be a positive integer")
		}
		limit = min(n, maxReportsListed)
	}
	list, err := a.reports.List(r.Context(), limit)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"reports": list})
	return nil
}
