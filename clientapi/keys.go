package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/keyserver"
)

// End-to-end encryption: /keys/* (device, one-time, fallback and
// cross-signing keys) and /room_keys/* (key backup), thin handlers over
// the key server. Dehydrated devices (MSC3814) are not served yet.

// KeyChanges answers /keys/changes: the sync API owns sync tokens and
// knows who shares rooms with whom. Bad tokens are *httputil.Error.
type KeyChanges interface {
	KeyChanges(ctx context.Context, userID, from, to string) (changed, left []string, err error)
}

type keyDeps struct {
	keys    keyserver.API
	changes KeyChanges
}

func (a *API) keyDeps() *keyDeps { return a.keys }

// withKeys wraps a handler that needs the key server.
func (a *API) withKeys(h func(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error) AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, s *accounts.Session) error {
		d := a.keyDeps()
		if d == nil {
			return httputil.Unrecognized("End-to-end encryption is not enabled")
		}
		return h(w, r, s, d)
	}
}

// crossSigningVersions include unstable: clients from before Matrix 1.1
// call cross-signing and key backup there.
const crossSigningVersions = v3 + "|" + unst

func (a *API) registerKeyRoutes(r *router) {
	// Guests may upload, query and claim keys (the spec's guest access list).
	r.authed(v3, "/keys/upload", a.withKeys(a.uploadKeys), http.MethodPost)
	r.authed(v3, "/keys/query", a.withKeys(a.queryKeys), http.MethodPost)
	r.authed(v3, "/keys/claim", a.withKeys(a.claimKeys), http.MethodPost)
	r.authed(v3, "/keys/changes", noGuests(a.withKeys(a.keyChanges)), http.MethodGet)
	r.authed(crossSigningVersions, "/keys/device_signing/upload", noGuests(a.withKeys(a.uploadCrossSigning)), http.MethodPost)
	r.authed(crossSigningVersions, "/keys/signatures/upload", noGuests(a.withKeys(a.uploadSignatures)), http.MethodPost)

	r.authed(crossSigningVersions, "/room_keys/version", noGuests(a.withKeys(a.createBackup)), http.MethodPost)
	r.authed(crossSigningVersions, "/room_keys/version", noGuests(a.withKeys(a.getBackup)), http.MethodGet)
	r.authed(crossSigningVersions, "/room_keys/version/{version}", noGuests(a.withKeys(a.getBackup)), http.MethodGet)
	r.authed(crossSigningVersions, "/room_keys/version/{version}", noGuests(a.withKeys(a.putBackup)), http.MethodPut)
	r.authed(crossSigningVersions, "/room_keys/version/{version}", noGuests(a.withKeys(a.deleteBackup)), http.MethodDelete)
	for _, path := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		r.authed(crossSigningVersions, path, noGuests(a.withKeys(a.putBackupKeys)), http.MethodPut)
		r.authed(crossSigningVersions, path, noGuests(a.withKeys(a.getBackupKeys)), http.MethodGet)
		r.authed(crossSigningVersions, path, noGuests(a.withKeys(a.deleteBackupKeys)), http.MethodDelete)
	}
}

// keysError maps the key server's errors to Matrix errors.
func keysError(err error) error {
	var ke *keyserver.Error
	if !errors.As(err, &ke) {
		return err
	}
	return matrixKeyError(ke)
}

func matrixKeyError(ke *keyserver.Error) *httputil.Error {
	switch ke.Code {
	case keyserver.CodeInvalidParam:
		return httputil.InvalidParam(ke.Message)
	case keyserver.CodeMissingParam:
		return httputil.MissingParam(ke.Message)
	case keyserver.CodeInvalidSignature:
		return &httputil.Error{Status: http.StatusBadRequest, Code: "M_INVALID_SIGNATURE", Message: ke.Message}
	case keyserver.CodeForbidden:
		return httputil.Forbidden(ke.Message)
	case keyserver.CodeNotFound:
		return httputil.NotFound(ke.Message)
	case keyserver.CodeWrongBackupVersion:
		return (&httputil.Error{Status: http.StatusForbidden, Code: "M_WRONG_ROOM_KEYS_VERSION", Message: ke.Message}).
			With("current_version", ke.CurrentVersion)
	}
	return httputil.Unknown(ke.Message)
}

func (a *API) uploadKeys(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	var req struct {
		DeviceKeys   json.RawMessage            `json:"device_keys"`
		OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
		FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	counts, err := d.keys.UploadKeys(r.Context(), keyserver.UploadRequest{
		UserID: a.userID(s.Localpart), DeviceID: s.DeviceID,
		DeviceKeys: req.DeviceKeys, OneTimeKeys: req.OneTimeKeys, FallbackKeys: req.FallbackKeys,
	})
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"one_time_key_counts": counts})
	return nil
}

func (a *API) queryKeys(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		Timeout    *int64              `json:"timeout"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.DeviceKeys == nil {
		return httputil.MissingParam("device_keys is required")
	}
	resp, err := d.keys.QueryKeys(r.Context(), a.userID(s.Localpart), req.DeviceKeys)
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

func (a *API) claimKeys(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     *int64                       `json:"timeout"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.OneTimeKeys == nil {
		return httputil.MissingParam("one_time_keys is required")
	}
	resp, err := d.keys.ClaimKeys(r.Context(), a.userID(s.Localpart), req.OneTimeKeys)
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, resp)
	return nil
}

func (a *API) keyChanges(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	q := r.URL.Query()
	from, to := q.Get("from"), q.Get("to")
	if from == "" || to == "" {
		return httputil.MissingParam("from and to are required")
	}
	if d.changes == nil {
		return httputil.Unrecognized("Key changes are not available")
	}
	changed, left, err := d.changes.KeyChanges(r.Context(), a.userID(s.Localpart), from, to)
	if err != nil {
		return err
	}
	if changed == nil {
		changed = []string{}
	}
	if left == nil {
		left = []string{}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"changed": changed, "left": left})
	return nil
}

// uploadCrossSigning needs user-interactive authentication only when it
// would replace keys the user already has (the spec's exception for the
// first upload, and for uploading the same keys again).
func (a *API) uploadCrossSigning(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	var req struct {
		Auth *uiaaAuth `json:"auth"`
		keyserver.CrossSigningUpload
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	userID := a.userID(s.Localpart)
	err := d.keys.UploadCrossSigningKeys(r.Context(), userID, req.CrossSigningUpload, false)
	if errors.Is(err, keyserver.ErrAuthRequired) {
		if _, err := a.requireUIAA(r, req.Auth, s.Localpart, passwordFlows, nil); err != nil {
			return err
		}
		err = d.keys.UploadCrossSigningKeys(r.Context(), userID, req.CrossSigningUpload, true)
	}
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) uploadSignatures(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	var req map[string]map[string]json.RawMessage
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	failures, err := d.keys.UploadSignatures(r.Context(), a.userID(s.Localpart), req)
	if err != nil {
		return keysError(err)
	}
	out := map[string]map[string]*httputil.Error{}
	for user, keys := range failures {
		out[user] = map[string]*httputil.Error{}
		for keyID, ke := range keys {
			out[user][keyID] = matrixKeyError(ke)
		}
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"failures": out})
	return nil
}

// dropDeviceKeys tells the key server that devices were deleted, so that
// their keys go and the users sharing rooms learn of it. Called by every
// endpoint that deletes devices (devices.go, account.go, login.go).
func (a *API) dropDeviceKeys(ctx context.Context, localpart string, deviceIDs []string) error {
	if err := a.dropDevicePushers(ctx, localpart, deviceIDs); err != nil { // pushers_devices.go
		return err
	}
	if d := a.keyDeps(); d != nil {
		return d.keys.DeleteDeviceKeys(ctx, a.userID(localpart), deviceIDs)
	}
	return nil
}

// dropAllDeviceKeys is dropDeviceKeys for every device but exceptDeviceID.
func (a *API) dropAllDeviceKeys(ctx context.Context, localpart, exceptDeviceID string) error {
	if err := a.dropAllDevicePushers(ctx, localpart, exceptDeviceID); err != nil { // pushers_devices.go
		return err
	}
	if d := a.keyDeps(); d != nil {
		return d.keys.DeleteAllDeviceKeys(ctx, a.userID(localpart), exceptDeviceID)
	}
	return nil
}

// ---- Key backup ----

func (a *API) createBackup(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	var req struct {
		Algorithm *string         `json:"algorithm"`
		AuthData  json.RawMessage `json:"auth_data"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.Algorithm == nil || req.AuthData == nil {
		return httputil.MissingParam("algorithm and auth_data are required")
	}
	version, err := d.keys.CreateBackup(r.Context(), a.userID(s.Localpart), *req.Algorithm, req.AuthData)
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]string{"version": version})
	return nil
}

// getBackup serves the current version, or the one in the path.
func (a *API) getBackup(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	info, err := d.keys.Backup(r.Context(), a.userID(s.Localpart), httputil.Vars(r)["version"])
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, info)
	return nil
}

func (a *API) putBackup(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	var req struct {
		Algorithm *string         `json:"algorithm"`
		AuthData  json.RawMessage `json:"auth_data"`
		Version   *string         `json:"version"`
	}
	if err := httputil.ReadJSON(r, &req); err != nil {
		return err
	}
	version := httputil.Vars(r)["version"]
	if req.Algorithm == nil || req.AuthData == nil {
		return httputil.MissingParam("algorithm and auth_data are required")
	}
	if req.Version != nil && *req.Version != version {
		return httputil.InvalidParam("version does not match the version in the path")
	}
	if err := d.keys.UpdateBackup(r.Context(), a.userID(s.Localpart), version, *req.Algorithm, req.AuthData); err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deleteBackup(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	if err := d.keys.DeleteBackup(r.Context(), a.userID(s.Localpart), httputil.Vars(r)["version"]); err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// backupKeyJSON is KeyBackupData as sent, to tell absent fields from zero.
type backupKeyJSON struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func (b *backupKeyJSON) key() (keyserver.BackupKey, error) {
	if b.FirstMessageIndex == nil || b.ForwardedCount == nil || b.IsVerified == nil || b.SessionData == nil {
		return keyserver.BackupKey{}, httputil.MissingParam("first_message_index, forwarded_count, is_verified and session_data are required")
	}
	return keyserver.BackupKey{FirstMessageIndex: *b.FirstMessageIndex, ForwardedCount: *b.ForwardedCount,
		IsVerified: *b.IsVerified, SessionData: b.SessionData}, nil
}

type backupSessionsJSON struct {
	Sessions map[string]backupKeyJSON `json:"sessions"`
}

// backupVersionParam is the version query parameter the keys endpoints
// require.
func backupVersionParam(r *http.Request) (string, error) {
	v := r.URL.Query().Get("version")
	if v == "" {
		return "", httputil.MissingParam("version is required")
	}
	return v, nil
}

func (a *API) putBackupKeys(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	version, err := backupVersionParam(r)
	if err != nil {
		return err
	}
	vars := httputil.Vars(r)
	roomID, sessionID := vars["roomId"], vars["sessionId"]
	rooms := map[string]backupSessionsJSON{}
	switch {
	case roomID == "":
		var req struct {
			Rooms map[string]backupSessionsJSON `json:"rooms"`
		}
		if err := httputil.ReadJSON(r, &req); err != nil {
			return err
		}
		if req.Rooms == nil {
			return httputil.MissingParam("rooms is required")
		}
		rooms = req.Rooms
	case sessionID == "":
		var req backupSessionsJSON
		if err := httputil.ReadJSON(r, &req); err != nil {
			return err
		}
		if req.Sessions == nil {
			return httputil.MissingParam("sessions is required")
		}
		rooms[roomID] = req
	default:
		var req backupKeyJSON
		if err := httputil.ReadJSON(r, &req); err != nil {
			return err
		}
		rooms[roomID] = backupSessionsJSON{Sessions: map[string]backupKeyJSON{sessionID: req}}
	}
	keys := keyserver.BackupKeys{}
	for room, sessions := range rooms {
		keys[room] = map[string]keyserver.BackupKey{}
		for session, raw := range sessions.Sessions {
			k, err := raw.key()
			if err != nil {
				return err
			}
			keys[room][session] = k
		}
	}
	etag, count, err := d.keys.PutBackupKeys(r.Context(), a.userID(s.Localpart), version, keys)
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"etag": etag, "count": count})
	return nil
}

func (a *API) getBackupKeys(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	version, err := backupVersionParam(r)
	if err != nil {
		return err
	}
	vars := httputil.Vars(r)
	roomID, sessionID := vars["roomId"], vars["sessionId"]
	keys, err := d.keys.BackupKeys(r.Context(), a.userID(s.Localpart), version, roomID, sessionID)
	if err != nil {
		return keysError(err)
	}
	switch {
	case roomID == "":
		rooms := map[string]any{}
		for room, sessions := range keys {
			rooms[room] = map[string]any{"sessions": sessions}
		}
		httputil.WriteJSON(w, http.StatusOK, map[string]any{"rooms": rooms})
	case sessionID == "":
		sessions := keys[roomID]
		if sessions == nil {
			sessions = map[string]keyserver.BackupKey{}
		}
		httputil.WriteJSON(w, http.StatusOK, map[string]any{"sessions": sessions})
	default:
		httputil.WriteJSON(w, http.StatusOK, keys[roomID][sessionID])
	}
	return nil
}

func (a *API) deleteBackupKeys(w http.ResponseWriter, r *http.Request, s *accounts.Session, d *keyDeps) error {
	version, err := backupVersionParam(r)
	if err != nil {
		return err
	}
	vars := httputil.Vars(r)
	etag, count, err := d.keys.DeleteBackupKeys(r.Context(), a.userID(s.Localpart), version, vars["roomId"], vars["sessionId"])
	if err != nil {
		return keysError(err)
	}
	httputil.WriteJSON(w, http.StatusOK, map[string]any{"etag": etag, "count": count})
	return nil
}
