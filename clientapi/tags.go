package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
)

// Room tags are kept as the room's m.tag account data, {"tags": {name:
// {order, ...}}}, so /sync carries them like any other account data.

const (
	maxTagNameLength = 255 // the spec's limit, in bytes
	maxTagsPerRoom   = 100
	maxTagSize       = 4 << 10
)

func (a *API) registerTagRoutes(r *router) {
	r.authed(v3, "/user/{userId}/rooms/{roomId}/tags", a.getTags, http.MethodGet)
	r.authed(v3, "/user/{userId}/rooms/{roomId}/tags/{tag}", a.putTag, http.MethodPut)
	r.authed(v3, "/user/{userId}/rooms/{roomId}/tags/{tag}", a.deleteTag, http.MethodDelete)
}

// tagsRequest checks the path and returns the room and the tag ("" for
// the list).
func (a *API) tagsRequest(r *http.Request, s *accounts.Session) (roomID, tag string, err error) {
	if err := a.requireOwnUser(r, s); err != nil {
		return "", "", err
	}
	if s.IsGuest {
		return "", "", httputil.GuestForbidden("Guests cannot tag rooms")
	}
	vars := httputil.Vars(r)
	roomID = vars["roomId"]
	if !validRoomID(roomID) {
		return "", "", httputil.InvalidParam("%q is not a valid room ID", roomID)
	}
	tag, isTag := vars["tag"]
	if isTag && (tag == "" || len(tag) > maxTagNameLength || !validStoredString(tag)) {
		return "", "", httputil.InvalidParam("A tag name is 1 to %d bytes of UTF-8 text", maxTagNameLength)
	}
	return roomID, tag, nil
}

// roomTags reads the room's tags, empty when none.
func (a *API) roomTags(ctx context.Context, localpart, roomID string) (map[string]json.RawMessage, error) {
	tags := map[string]json.RawMessage{}
	raw, err := a.accounts.AccountData(ctx, localpart, roomID, "m.tag")
	if errors.Is(err, accounts.ErrNotFound) {
		return tags, nil
	}
	if err != nil {
		return nil, err
	}
	if t := gjson.GetBytes(raw, "tags"); t.IsObject() {
		t.ForEach(func(k, v gjson.Result) bool {
			if v.IsObject() {
				tags[k.String()] = json.RawMessage(v.Raw)
			}
			return true
		})
	}
	return tags, nil
}

// setRoomTag adds (content non-nil) or removes a tag and wakes the
// user's syncs, which carry the new m.tag.
func (a *API) setRoomTag(ctx context.Context, localpart, roomID, tag string, content json.RawMessage) error {
	tags, err := a.roomTags(ctx, localpart, roomID)
	if err != nil {
		return err
	}
	if content == nil {
		if _, ok := tags[tag]; !ok {
			return nil
		}
		delete(tags, tag)
	} else {
		if _, ok := tags[tag]; !ok && len(tags) >= maxTagsPerRoom {
			return httputil.TooLarge("A room can have at most %d tags", maxTagsPerRoom)
		}
		tags[tag] = content
	}
	data, err := json.Marshal(map[string]any{"tags": tags})
	if err != nil {
		return err
	}
	if _, err := a.accounts.PutAccountData(ctx, localpart, roomID, "m.tag", data); err != nil {
		return err
	}
	if a.waker != nil {
		a.waker.WakeUser(a.userID(localpart))
	}
	return nil
}

func (a *API) getTags(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, _, err := a.tagsRequest(r, s)
	if err != nil {
		return err
	}
	tags, err := a.roomTags(r.Context(), s.Localpart, roomID)
	if err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"tags": tags})
	return nil
}

func (a *API) putTag(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, tag, err := a.tagsRequest(r, s)
	if err != nil {
		return err
	}
	body, err := httputil.ReadBody(r)
	if err != nil {
		return err
	}
	if len(body) > maxTagSize {
		return httputil.TooLarge("A tag is larger than %d bytes", maxTagSize)
	}
	content, err := compactObject(body)
	if err != nil {
		return err
	}
	if order := gjson.GetBytes(content, "order"); order.Exists() {
		if order.Type != gjson.Number || order.Float() < 0 || order.Float() > 1 {
			return httputil.InvalidParam("order must be a number from 0 to 1")
		}
	}
	if err := a.setRoomTag(r.Context(), s.Localpart, roomID, tag, content); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deleteTag(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
	roomID, tag, err := a.tagsRequest(r, s)
	if err != nil {
		return err
	}
	if err := a.setRoomTag(r.Context(), s.Localpart, roomID, tag, nil); err != nil {
		return err
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}
