package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/mxid"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Server notices: the system user (server_notices.system_user_localpart,
// made on first use, unable to log in) sends m.room.message events with
// msgtype m.server_notice into one room per user. The room is made on the
// first notice: invite-only, the user invited (not joined, as the spec
// asks) and unable to send anything (events_default 100), tagged
// m.server_notice in the user's room account data. Which room belongs to
// which user is kept in the system user's own account data, under
// serverNoticeRoomType + the user's ID, so no table is needed. Admins send
// notices with POST /_plexus/admin/v1/server_notice.

const (
	serverNoticeTag      = "m.server_notice"
	serverNoticeRoomType = "org.plexus.server_notice_room."
	maxServerNoticeSize  = 32 << 10
)

// serverNoticeMu serialises notices, so that two at once for a new user
// make one room.
var serverNoticeMu sync.Mutex

func (a *API) registerServerNoticeRoutes(root *mux.Router) {
	root.Handle("/_plexus/admin/v1/server_notice", a.Authed(a.adminOnly(a.adminServerNotice))).Methods(http.MethodPost)
	// Synapse's admin path, which tools and Complement use; with a
	// transaction ID a repeated request sends nothing new.
	root.Handle("/_synapse/admin/v1/send_server_notice", a.Authed(a.adminOnly(a.adminServerNotice))).Methods(http.MethodPost)
	root.Handle("/_synapse/admin/v1/send_server_notice/{txnId}", a.Authed(a.adminOnly(a.adminServerNotice))).Methods(http.MethodPut)
}

func (a *API) systemUserID() string { return a.userID(a.cfg.ServerNotices.SystemUserLocalpart) }

func (a *API) adminServerNotice(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	var req struct {
		UserID  string          `json:"user_id"`
		Content json.RawMessage `json:"content"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.UserID == "" || len(req.Content) == 0 {
		return httputil.MissingParam("user_id and content are required")
	}
	var txn noticeTxn
	if id := httputil.Vars(r)["txnId"]; id != "" {
		// Scoped to the admin's device, as client transaction IDs are.
		txn = noticeTxn{id: id, device: "admin/" + s.Localpart + "/" + s.DeviceID}
	}
	roomID, eventID, err := a.sendServerNotice(r.Context(), req.UserID, req.Content, txn)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"room_id": roomID, "event_id": eventID})
	return nil
}

// noticeTxn is the transaction a notice is sent in ("" for none).
type noticeTxn struct{ id, device string }

// SendServerNotice sends a notice to a local user and returns its room
// and event. content is an m.room.message content with a body; its
// msgtype is set to m.server_notice, as the spec has notices.
func (a *API) SendServerNotice(ctx context.Context, userID string, content json.RawMessage) (roomID, eventID string, err error) {
	return a.sendServerNotice(ctx, userID, content, noticeTxn{})
}

func (a *API) sendServerNotice(ctx context.Context, userID string, content json.RawMessage, txn noticeTxn) (roomID, eventID string, err error) {
	c := gjson.ParseBytes(content)
	if len(content) > maxServerNoticeSize {
		return "", "", httputil.TooLarge("content is larger than %d bytes", maxServerNoticeSize)
	}
	if !c.IsObject() || c.Get("body").Type != gjson.String {
		return "", "", httputil.BadJSON("content must be an object with a body")
	}
	var body map[string]any
	if err := json.Unmarshal(content, &body); err != nil {
		return "", "", httputil.BadJSON("content must be a JSON object")
	}
	body["msgtype"] = "m.server_notice"
	uid, err := mxid.ParseUserID(userID)
	if err != nil || uid.Server != a.cfg.ServerName {
		return "", "", httputil.InvalidParam("user_id must be a user of this server")
	}
	if uid.Localpart == a.cfg.ServerNotices.SystemUserLocalpart {
		return "", "", httputil.InvalidParam("The system user cannot receive notices")
	}
	acc, err := a.accounts.Account(ctx, uid.Localpart)
	if errors.Is(err, accounts.ErrNotFound) || (err == nil && acc.Deactivated) {
		return "", "", httputil.NotFound("No such user")
	}
	if err != nil {
		return "", "", err
	}
	serverNoticeMu.Lock()
	defer serverNoticeMu.Unlock()
	if err := a.ensureSystemUser(ctx); err != nil {
		return "", "", err
	}
	roomID, err = a.serverNoticeRoom(ctx, uid.String(), uid.Localpart)
	if err != nil {
		return "", "", err
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return "", "", err
	}
	ev, err := a.rooms.SendEvent(ctx, rsapi.NewEvent{RoomID: roomID, Sender: a.systemUserID(), Type: "m.room.message", Content: raw,
		TxnID: txn.id, DeviceID: txn.device})
	if err != nil {
		return "", "", roomError(err)
	}
	return roomID, ev.EventID(), nil
}

// ensureSystemUser makes the system user's account (with no password, so
// nobody can log in as it) and display name.
func (a *API) ensureSystemUser(ctx context.Context) error {
	localpart := a.cfg.ServerNotices.SystemUserLocalpart
	_, err := a.accounts.CreateAccount(ctx, localpart, "", false, false)
	if errors.Is(err, accounts.ErrUserInUse) {
		return nil
	}
	if err != nil {
		return err
	}
	return a.accounts.SetDisplayName(ctx, localpart, a.cfg.ServerNotices.SystemUserDisplayName)
}

// serverNoticeRoom returns the user's notice room, made on first use; the
// user is invited to it then, and again after leaving it.
func (a *API) serverNoticeRoom(ctx context.Context, userID, localpart string) (string, error) {
	system := a.cfg.ServerNotices.SystemUserLocalpart
	key := serverNoticeRoomType + userID
	raw, err := a.accounts.AccountData(ctx, system, "", key)
	if err != nil && !errors.Is(err, accounts.ErrNotFound) {
		return "", err
	}
	roomID := gjson.GetBytes(raw, "room_id").String()
	if roomID == "" {
		if roomID, err = a.createServerNoticeRoom(ctx, userID); err != nil {
			return "", err
		}
		data, _ := json.Marshal(map[string]string{"room_id": roomID})
		if _, err := a.accounts.PutAccountData(ctx, system, "", key, data); err != nil {
			return "", err
		}
	}
	m, err := a.rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return "", roomError(err)
	}
	if m.Membership == spec.Leave {
		if err := a.sendMembership(ctx, roomID, a.systemUserID(), userID, map[string]any{"membership": spec.Invite}); err != nil {
			return "", err
		}
	}
	// The tag is set each time: the user may have removed it.
	if err := a.setRoomTag(ctx, localpart, roomID, serverNoticeTag, json.RawMessage(`{}`)); err != nil {
		return "", err
	}
	return roomID, nil
}

// createServerNoticeRoom makes the room; serverNoticeRoom then invites the user.
func (a *API) createServerNoticeRoom(ctx context.Context, userID string) (string, error) {
	system := a.systemUserID()
	version := gomatrixserverlib.RoomVersion(a.cfg.DefaultRoomVersion)
	users := map[string]int{system: 100}
	if version == gomatrixserverlib.RoomVersionV12 {
		users = map[string]int{} // creators have unlimited power and are not listed
	}
	return a.rooms.CreateRoom(ctx, rsapi.CreateRoomRequest{
		Version: version, Creator: system,
		InitialState: []rsapi.StateEvent{
			{Type: spec.MRoomMember, StateKey: system, Content: map[string]any{"membership": spec.Join,
				"displayname": a.cfg.ServerNotices.SystemUserDisplayName}},
			// Only the system user may send anything.
			{Type: spec.MRoomPowerLevels, Content: map[string]any{"users": users, "users_default": 0,
				"events_default": 100, "state_default": 100, "invite": 100, "kick": 100, "ban": 100, "redact": 100}},
			{Type: spec.MRoomJoinRules, Content: map[string]any{"join_rule": spec.Invite}},
			{Type: spec.MRoomHistoryVisibility, Content: map[string]any{"history_visibility": "shared"}},
			{Type: spec.MRoomGuestAccess, Content: map[string]any{"guest_access": "forbidden"}},
			{Type: spec.MRoomName, Content: map[string]any{"name": a.cfg.ServerNotices.RoomName}},
		},
	})
}

// refuseServerNoticeReject stops a user from rejecting the invite to
// their server notices room, as the spec requires (leaving once joined
// is allowed).
func (a *API) refuseServerNoticeReject(ctx context.Context, localpart, roomID string) error {
	raw, err := a.accounts.AccountData(ctx, localpart, roomID, "m.tag")
	if errors.Is(err, accounts.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !gjson.GetBytes(raw, "tags."+gjson.Escape(serverNoticeTag)).Exists() {
		return nil
	}
	owner, err := a.accounts.AccountData(ctx, a.cfg.ServerNotices.SystemUserLocalpart, "", serverNoticeRoomType+a.userID(localpart))
	if err != nil || gjson.GetBytes(owner, "room_id").String() != roomID {
		return nil // a tag the user set themselves
	}
	return &httputil.Error{Status: http.StatusForbidden, Code: "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
		Message: "You cannot reject the invite to your server notices room"}
}
