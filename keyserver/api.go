// Package keyserver owns the end-to-end encryption keys: device keys,
// one-time and fallback keys, cross-signing keys and signatures, the
// device list stream, and server-side key backups. Other components reach
// it only through API (see README.md).
package keyserver

import (
	"context"
	"encoding/json"
	"fmt"
)

// ErrorCode classifies the errors the key server returns; the HTTP layer
// maps each to a Matrix errcode and status in one place.
type ErrorCode int

const (
	// CodeInvalidParam is a request the spec rejects (400 M_INVALID_PARAM).
	CodeInvalidParam ErrorCode = iota + 1
	// CodeMissingParam is a required field absent (400 M_MISSING_PARAM).
	CodeMissingParam
	// CodeInvalidSignature is a signature that does not verify (400 M_INVALID_SIGNATURE).
	CodeInvalidSignature
	// CodeForbidden is an operation not allowed (403 M_FORBIDDEN).
	CodeForbidden
	// CodeNotFound is an unknown backup, key or session (404 M_NOT_FOUND).
	CodeNotFound
	// CodeWrongBackupVersion is a write to a backup that is not the current
	// one (403 M_WRONG_ROOM_KEYS_VERSION with current_version).
	CodeWrongBackupVersion
	// CodeAuthRequired means the cross-signing upload replaces existing
	// keys and needs user-interactive authentication.
	CodeAuthRequired
)

// Error is a key server error that a client caused.
type Error struct {
	Code    ErrorCode
	Message string
	// CurrentVersion is set with CodeWrongBackupVersion ("" when there is
	// no current backup).
	CurrentVersion string
}

func (e *Error) Error() string { return fmt.Sprintf("keyserver: %s", e.Message) }

func newErr(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrAuthRequired is returned by UploadCrossSigningKeys when the upload
// would replace existing keys and the caller did not authenticate.
var ErrAuthRequired = &Error{Code: CodeAuthRequired, Message: "replacing cross-signing keys needs authentication"}

// UploadRequest is the body of POST /keys/upload for one device. Each
// part may be nil.
type UploadRequest struct {
	UserID, DeviceID string
	DeviceKeys       json.RawMessage
	OneTimeKeys      map[string]json.RawMessage
	FallbackKeys     map[string]json.RawMessage
}

// QueryResponse is the answer to /keys/query (and, for other servers,
// /user/keys/query). Maps are never nil.
type QueryResponse struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
	UserSigningKeys map[string]json.RawMessage            `json:"user_signing_keys"`
	// Failures names the servers that could not be asked, each with an
	// (empty) object.
	Failures map[string]any `json:"failures"`
}

// ClaimResponse is the answer to /keys/claim: user -> device ->
// "algorithm:key_id" -> key.
type ClaimResponse struct {
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures    map[string]any                                   `json:"failures"`
}

// CrossSigningUpload is the body of /keys/device_signing/upload; each key
// may be nil.
type CrossSigningUpload struct {
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
	UserSigningKey json.RawMessage `json:"user_signing_key"`
}

// BackupVersion describes one key backup.
type BackupVersion struct {
	Version   string          `json:"version"`
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int             `json:"count"`
	ETag      string          `json:"etag"`
}

// BackupKey is one backed-up Megolm session (KeyBackupData).
type BackupKey struct {
	FirstMessageIndex int64           `json:"first_message_index"`
	ForwardedCount    int64           `json:"forwarded_count"`
	IsVerified        bool            `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

// BackupKeys are backed-up sessions: room ID -> session ID -> key.
type BackupKeys map[string]map[string]BackupKey

// DeviceListUpdate is one change of a user's device list: a device's keys
// uploaded, changed or deleted (DeviceID set), or the user's cross-signing
// keys changed (DeviceID ""). StreamID is the change's position in the
// device list stream for local users; for remote users it is the ID the
// user's server gave (m.device_list_update's stream_id).
type DeviceListUpdate struct {
	UserID      string
	DeviceID    string
	DisplayName string
	StreamID    int64
	// PrevIDs are the stream IDs of the user's previous device change
	// (local: at most one; none for the user's first, and none for
	// cross-signing changes, whose m.signing_key_update has no chain).
	PrevIDs []int64
	Deleted bool
	// Keys is the device's keys as uploaded (with the signatures others may
	// see); nil when deleted or for a cross-signing change.
	Keys json.RawMessage
}

// UserDevices is a user's whole device list, as /user/devices/{userId}
// serves it over federation.
type UserDevices struct {
	UserID   string
	StreamID int64
	Devices  []UserDevice
	// MasterKey and SelfSigningKey are nil when the user has none.
	MasterKey, SelfSigningKey json.RawMessage
}

// UserDevice is one device with keys.
type UserDevice struct {
	DeviceID    string
	DisplayName string
	Keys        json.RawMessage
}

// RemoteKeys asks other servers for keys (/user/keys/query and
// /user/keys/claim). The federation API implements it; without one,
// remote users' servers are reported in failures.
type RemoteKeys interface {
	// QueryKeys asks server for the keys of its users (user -> device IDs,
	// empty for all). The answer is the server's /user/keys/query response.
	QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (*QueryResponse, error)
	// ClaimKeys claims one-time keys of server's users (user -> device ->
	// algorithm).
	ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (map[string]map[string]map[string]json.RawMessage, error)
	// SharesRoom reports whether a local user shares a room with a remote
	// user. Only then does the user's server send us their device list
	// updates, so only then is their list cached (see remote.go).
	SharesRoom(ctx context.Context, userID string) (bool, error)
}

// API is the key server as other components see it. Users are full user
// IDs; remote users' keys are a cache kept by the federation API.
type API interface {
	// UploadKeys stores a device's keys after checking them (user and
	// device match, signatures by the device's ed25519 key, key IDs,
	// conflicting re-uploads) and returns the device's one-time key counts.
	UploadKeys(ctx context.Context, req UploadRequest) (map[string]int, error)
	// QueryKeys answers /keys/query for requester (a local user, or "" for
	// another server asking, /user/keys/query): device keys with display
	// names and the cross-signing keys and signatures requester may see.
	// For requester "" only local users are answered.
	QueryKeys(ctx context.Context, requester string, deviceKeys map[string][]string) (*QueryResponse, error)
	// ClaimKeys hands out one-time keys (each once), or a device's
	// fallback key when it has none left. requester is as for QueryKeys:
	// for "" (/user/keys/claim) only local users' keys are claimed.
	ClaimKeys(ctx context.Context, requester string, oneTimeKeys map[string]map[string]string) (*ClaimResponse, error)
	// KeyCounts are a device's unclaimed one-time keys per algorithm and
	// the algorithms of its unused fallback keys, for /sync.
	KeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error)
	// DeleteDeviceKeys drops the keys of deleted devices and records the
	// change; devices without keys are ignored.
	DeleteDeviceKeys(ctx context.Context, userID string, deviceIDs []string) error
	// DeleteAllDeviceKeys drops the keys of every device of the user but
	// exceptDeviceID ("" for none).
	DeleteAllDeviceKeys(ctx context.Context, userID, exceptDeviceID string) error

	// UploadCrossSigningKeys stores cross-signing keys. Replacing existing
	// keys needs authenticated; without it ErrAuthRequired. Uploading the
	// keys already stored is a no-op.
	UploadCrossSigningKeys(ctx context.Context, userID string, keys CrossSigningUpload, authenticated bool) error
	// UploadSignatures adds cross-signing signatures by userID (deviceID's
	// session): user -> key ID -> signed object. It returns the failures
	// per user and key ID.
	UploadSignatures(ctx context.Context, userID string, signed map[string]map[string]json.RawMessage) (map[string]map[string]*Error, error)

	// DeviceListPosition is the newest position of the device list stream.
	DeviceListPosition() int64
	// DeviceListNotify returns a channel closed once the stream is past pos.
	DeviceListNotify(pos int64) <-chan struct{}
	// DeviceListChanges lists the users (local and remote) whose device
	// lists changed in positions (from, to].
	DeviceListChanges(ctx context.Context, from, to int64) ([]string, error)

	// For the federation API (see README.md).

	// LocalDeviceListUpdates lists the changes of local users after
	// position after, oldest first, to send as m.device_list_update
	// (DeviceID set) and m.signing_key_update (DeviceID "") EDUs.
	LocalDeviceListUpdates(ctx context.Context, after int64, limit int) ([]DeviceListUpdate, error)
	// UserDevices is a local user's device list for /user/devices/{userId}.
	UserDevices(ctx context.Context, userID string) (*UserDevices, error)
	// ApplyRemoteDeviceListUpdate stores one m.device_list_update of a
	// remote user (the caller has checked prev_id for gaps with
	// RemoteDeviceListStreamID) and wakes the users who share a room.
	ApplyRemoteDeviceListUpdate(ctx context.Context, u DeviceListUpdate) error
	// ReplaceRemoteDeviceList replaces a remote user's cached device list
	// (a resync through /user/devices after a gap, or a first query).
	ReplaceRemoteDeviceList(ctx context.Context, d UserDevices) error
	// RemoteDeviceListStreamID is the stream ID of the last update applied
	// for a remote user; ok is false when the user's list is not cached.
	RemoteDeviceListStreamID(ctx context.Context, userID string) (id int64, ok bool, err error)
	// ApplyRemoteCrossSigningKeys stores an m.signing_key_update.
	ApplyRemoteCrossSigningKeys(ctx context.Context, userID string, master, selfSigning json.RawMessage) error
	// ForgetRemoteDeviceList drops a remote user's cached device list
	// (a resync failed): until it is cached again, queries ask the
	// user's server. The change is recorded, so that room-mates' clients
	// query again.
	ForgetRemoteDeviceList(ctx context.Context, userID string) error

	// Key backup. Versions are opaque strings to clients.
	CreateBackup(ctx context.Context, userID, algorithm string, authData json.RawMessage) (string, error)
	// Backup returns a version ("" for the current one); CodeNotFound.
	Backup(ctx context.Context, userID, version string) (*BackupVersion, error)
	UpdateBackup(ctx context.Context, userID, version, algorithm string, authData json.RawMessage) error
	DeleteBackup(ctx context.Context, userID, version string) error
	// PutBackupKeys stores sessions in the current version, keeping for
	// each session the better of the old and new key; it returns the new
	// etag and count.
	PutBackupKeys(ctx context.Context, userID, version string, keys BackupKeys) (etag string, count int, err error)
	// BackupKeys reads sessions: all (roomID ""), a room's, or one.
	BackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (BackupKeys, error)
	// DeleteBackupKeys deletes sessions of the current version: all
	// (roomID ""), a room's, or one.
	DeleteBackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (etag string, count int, err error)
}
