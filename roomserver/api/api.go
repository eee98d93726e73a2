// Package api is the roomserver as other components see it: the types and
// errors of its interface, and the interfaces themselves, split by what
// each consumer needs.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
)

// Errors the roomserver returns; the HTTP layer maps them to Matrix errors.
var (
	ErrRoomNotFound  = errors.New("roomserver: room not found")
	ErrEventNotFound = errors.New("roomserver: event not found")
	// ErrUnsupportedRoomVersion is returned when creating a room of a
	// version this server cannot handle.
	ErrUnsupportedRoomVersion = errors.New("roomserver: unsupported room version")
)

// NotAllowedError is an event refused by the auth rules; Reason is
// written for people.
type NotAllowedError struct{ Reason string }

func (e *NotAllowedError) Error() string { return "not allowed: " + e.Reason }

// BadEventError is an event that cannot be built or is malformed (too
// large, bad content); Reason is written for people.
type BadEventError struct{ Reason string }

func (e *BadEventError) Error() string { return "bad event: " + e.Reason }

// TooLargeError is an event or one of its fields over the spec's limits.
type TooLargeError struct{ Reason string }

func (e *TooLargeError) Error() string { return "too large: " + e.Reason }

// BadEventf makes a BadEventError.
func BadEventf(format string, args ...any) error {
	return &BadEventError{Reason: fmt.Sprintf(format, args...)}
}

// NewEvent is an event a local user wants to send.
type NewEvent struct {
	RoomID   string
	Sender   string // full user ID
	Type     string
	StateKey *string
	Content  json.RawMessage
	Redacts  string
	// TxnID and DeviceID, when TxnID is set, make the send idempotent: the
	// same sender, device and transaction ID get the first event back.
	TxnID    string
	DeviceID string
}

// StateEvent is one state event of a new room.
type StateEvent struct {
	Type     string
	StateKey string
	Content  any
}

// CreateRoomRequest describes a new room: the create event's content and
// the state events that follow the creator's join, in order.
type CreateRoomRequest struct {
	Version       gomatrixserverlib.RoomVersion
	Creator       string // full user ID
	CreateContent map[string]any
	// InitialState follows the creator's join (power levels first).
	InitialState []StateEvent
}

// Event is a stored event with what the roomserver knows about it.
type Event struct {
	gomatrixserverlib.PDU
	// Position in the room event stream; 0 when the event is not in it.
	Position int64
	// StateNID identifies the room state before the event.
	StateBefore int64
}

// OutputEvent is one entry of the ordered stream of accepted events.
type OutputEvent struct {
	Position int64
	RoomID   string
	Event    gomatrixserverlib.PDU
	// The room's current state changed: these event IDs entered and left it.
	AddsState    []string
	RemovesState []string
	// TxnID and DeviceID are set for local events sent with a transaction
	// ID, so the sending device can recognise its echo.
	TxnID    string
	DeviceID string
}

// Membership is a user's membership of a room.
type Membership struct {
	RoomID     string
	UserID     string
	Membership string // join, invite, leave, ban, knock
	EventID    string
}

// Inputter takes events into rooms.
type Inputter interface {
	// CreateRoom makes a room and returns its ID.
	CreateRoom(ctx context.Context, req CreateRoomRequest) (string, error)
	// SendEvent builds, signs, authorises and stores an event from a local
	// user at the room's current state. *NotAllowedError when the auth
	// rules refuse it, *BadEventError when it is malformed.
	SendEvent(ctx context.Context, ev NewEvent) (gomatrixserverlib.PDU, error)
}

// Querier reads rooms.
type Querier interface {
	// RoomVersion returns ErrRoomNotFound for rooms the server does not know.
	RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error)
	// CurrentState returns the room's current state events.
	CurrentState(ctx context.Context, roomID string) ([]gomatrixserverlib.PDU, error)
	// CurrentStateEvent returns one current state event, or nil.
	CurrentStateEvent(ctx context.Context, roomID, eventType, stateKey string) (gomatrixserverlib.PDU, error)
	// StateBefore returns the state before an event (StateBefore of Event),
	// only the given types when types is non-empty.
	StateAt(ctx context.Context, stateNID int64, types ...string) ([]gomatrixserverlib.PDU, error)
	// Event returns an event of the room by ID; ErrEventNotFound.
	Event(ctx context.Context, eventID string) (*Event, error)
	// Memberships returns the user's current memberships of all rooms.
	Memberships(ctx context.Context, userID string) ([]Membership, error)
	// Membership returns the user's current membership of one room
	// ("leave" with no event ID when never a member).
	Membership(ctx context.Context, roomID, userID string) (Membership, error)
}

// Stream is the ordered output of accepted events, for consumers that
// keep their own position.
type Stream interface {
	// OutputSince returns up to limit entries after position.
	OutputSince(ctx context.Context, position int64, limit int) ([]OutputEvent, error)
	// LatestPosition is the position of the newest entry.
	LatestPosition(ctx context.Context) (int64, error)
	// Notify returns a channel closed when entries after position exist.
	Notify(position int64) <-chan struct{}
}

// ErrAliasInUse is returned when creating an alias that exists.
var ErrAliasInUse = errors.New("roomserver: alias in use")

// Aliases maps local room aliases to rooms.
type Aliases interface {
	// SetAlias creates alias -> roomID; ErrAliasInUse when taken.
	SetAlias(ctx context.Context, alias, roomID, creator string) error
	// ResolveAlias returns the room of an alias, "" when unknown.
	ResolveAlias(ctx context.Context, alias string) (roomID string, err error)
	// AliasCreator returns who created an alias ("" when unknown).
	AliasCreator(ctx context.Context, alias string) (string, error)
	// RemoveAlias deletes an alias; ErrAliasNotFound when unknown.
	RemoveAlias(ctx context.Context, alias string) error
	// RoomAliases lists the local aliases of a room.
	RoomAliases(ctx context.Context, roomID string) ([]string, error)
}

// ErrAliasNotFound is returned for unknown aliases.
var ErrAliasNotFound = errors.New("roomserver: alias not found")

// RoomserverAPI is everything, for wiring.
type RoomserverAPI interface {
	Inputter
	Querier
	Stream
	Aliases
}
