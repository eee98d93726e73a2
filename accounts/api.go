// Package accounts owns local user accounts and everything attached to
// them: passwords, devices, access and refresh tokens, profiles, account
// data and filters. Other components reach it only through API.
package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Errors returned by API. The HTTP layer maps them to Matrix error codes.
var (
	ErrUserInUse     = errors.New("accounts: user ID already taken")
	ErrNotFound      = errors.New("accounts: not found")
	ErrWrongPassword = errors.New("accounts: wrong password")
	ErrDeactivated   = errors.New("accounts: account deactivated")
	ErrUnknownToken  = errors.New("accounts: unknown token")
	// ErrTokenExpired is returned for an access token that was valid but
	// has expired: clients should refresh it (soft logout).
	ErrTokenExpired = errors.New("accounts: token expired")
)

// Account is a local user account.
type Account struct {
	Localpart   string
	IsAdmin     bool
	IsGuest     bool
	Deactivated bool
	CreatedTS   int64 // ms since the epoch
}

// Device is one login of a user.
type Device struct {
	Localpart   string
	DeviceID    string
	DisplayName string
	LastSeenIP  string
	LastSeenTS  int64 // ms since the epoch; 0 when never seen
}

// Session is what an access token stands for.
type Session struct {
	Localpart string
	DeviceID  string
	IsGuest   bool
	IsAdmin   bool
}

// Tokens are issued to a device at login, registration and refresh.
type Tokens struct {
	AccessToken string
	// RefreshToken is empty unless a refreshable login was asked for.
	RefreshToken string
	// ExpiresIn is the access token's lifetime; zero means it never expires
	// (always the case without a refresh token).
	ExpiresIn time.Duration
}

// Profile is a user's public profile.
type Profile struct {
	DisplayName string
	AvatarURL   string
}

// NewDevice describes a login.
type NewDevice struct {
	// DeviceID to use; empty means generate one. An existing device of the
	// same user with this ID has its old tokens revoked and keeps its ID.
	DeviceID    string
	DisplayName string
	// Refreshable asks for a refresh token and an expiring access token.
	Refreshable bool
	IP          string
}

// AccountDataEntry is one piece of account data, global (RoomID "") or per room.
type AccountDataEntry struct {
	RoomID    string
	Type      string
	Content   json.RawMessage
	StreamPos int64
}

// API is the accounts component as other components see it. Users are
// named by localpart: accounts are always local.
type API interface {
	// CreateAccount makes an account. An empty password makes an account
	// that cannot log in with a password. ErrUserInUse when taken
	// (case-insensitively: localparts are stored lower-cased).
	CreateAccount(ctx context.Context, localpart, password string, admin, guest bool) (*Account, error)
	// Account returns an account, deactivated ones included; ErrNotFound.
	Account(ctx context.Context, localpart string) (*Account, error)
	// LocalpartAvailable reports whether no account (even deactivated) has it.
	LocalpartAvailable(ctx context.Context, localpart string) (bool, error)
	// CheckPassword returns the account when password matches. ErrNotFound,
	// ErrWrongPassword, ErrDeactivated.
	CheckPassword(ctx context.Context, localpart, password string) (*Account, error)
	SetPassword(ctx context.Context, localpart, password string) error
	// Deactivate marks the account deactivated and removes its devices,
	// tokens and profile. The localpart stays taken.
	Deactivate(ctx context.Context, localpart string) error

	// CreateDevice logs a device in and returns its tokens.
	CreateDevice(ctx context.Context, localpart string, d NewDevice) (*Device, Tokens, error)
	// Authenticate resolves an access token: ErrUnknownToken, ErrTokenExpired.
	// It records the device's last-seen IP and time (throttled).
	Authenticate(ctx context.Context, accessToken, ip string) (*Session, error)
	// Refresh exchanges a refresh token for new tokens; the old refresh
	// token and old access token stop working. ErrUnknownToken.
	Refresh(ctx context.Context, refreshToken string) (Tokens, error)
	Devices(ctx context.Context, localpart string) ([]Device, error)
	// Device returns one device; ErrNotFound.
	Device(ctx context.Context, localpart, deviceID string) (*Device, error)
	// SetDeviceDisplayName renames a device; ErrNotFound.
	SetDeviceDisplayName(ctx context.Context, localpart, deviceID, name string) error
	// DeleteDevices removes the devices and their tokens; unknown IDs are ignored.
	DeleteDevices(ctx context.Context, localpart string, deviceIDs []string) error
	// DeleteAllDevices removes every device but exceptDeviceID (which may be "").
	DeleteAllDevices(ctx context.Context, localpart, exceptDeviceID string) error

	// Profile returns the profile; ErrNotFound when there is no such
	// (active) account.
	Profile(ctx context.Context, localpart string) (Profile, error)
	SetDisplayName(ctx context.Context, localpart, name string) error
	SetAvatarURL(ctx context.Context, localpart, url string) error

	// PutAccountData stores content for (roomID, type); roomID "" is global.
	// Returns the entry's new position in the account data stream.
	PutAccountData(ctx context.Context, localpart, roomID, dataType string, content json.RawMessage) (int64, error)
	// AccountData returns one entry's content; ErrNotFound.
	AccountData(ctx context.Context, localpart, roomID, dataType string) (json.RawMessage, error)
	// AccountDataSince returns the user's entries changed after stream
	// position since (0 for all), and the current stream position.
	AccountDataSince(ctx context.Context, localpart string, since int64) ([]AccountDataEntry, int64, error)

	// CreateLoginToken issues a single-use m.login.token for the user,
	// valid for lifetime (logintokens.go).
	CreateLoginToken(ctx context.Context, localpart string, lifetime time.Duration) (string, error)
	// ConsumeLoginToken uses up a login token and returns its user's
	// localpart; ErrUnknownToken (unknown, used or expired), ErrDeactivated.
	ConsumeLoginToken(ctx context.Context, token string) (string, error)

	// PutFilter stores a (validated) filter and returns its ID.
	PutFilter(ctx context.Context, localpart string, filter json.RawMessage) (string, error)
	// Filter returns a stored filter; ErrNotFound.
	Filter(ctx context.Context, localpart, filterID string) (json.RawMessage, error)
}
