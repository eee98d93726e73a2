package pushrules

import (
	"encoding/json"
	"errors"
)

// Pusher is a user's registration to have notifications sent somewhere
// (POST /pushers/set): the push module's other half, shared by the client
// API, which validates it, and the sync API, which stores it beside the
// notifications it records.
type Pusher struct {
	// UserID owns the pusher; DeviceID is the device that set it.
	UserID   string `json:"-"`
	DeviceID string `json:"-"`

	PushKey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
}

// Limits the spec sets on pushers.
const (
	MaxPushKeyLength = 512 // bytes
	MaxAppIDLength   = 64  // characters
)

// MaxPushersPerUser bounds a user's pushers.
const MaxPushersPerUser = 100

// ErrTooManyPushers is a pusher over MaxPushersPerUser.
var ErrTooManyPushers = errors.New("too many pushers")
