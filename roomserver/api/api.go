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
type NotAllowedError struct {
	Reason string
	// NoLocalAuthoriser: a restricted join the user qualifies for, that no
	// member of the room on this server may authorise (another resident
	// server may: the client API then joins through it).
	NoLocalAuthoriser bool
}

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
	// RoomID, when set, is the ID to give the room, in room versions whose
	// IDs are not derived from the create event (an upgrade names the new
	// room in the old one's tombstone before creating it).
	RoomID        string
	Version       gomatrixserverlib.RoomVersion
	Creator       string // full user ID
	CreateContent map[string]any
	// InitialState follows the creator's join (power levels first).
	InitialState []StateEvent
	// Alias, when set, is a local alias created for the room in the same
	// transaction; ErrAliasInUse when taken.
	Alias string
	// Publish lists the room in the published room directory.
	Publish bool
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
	Directory // directory and room upgrades: see the block below
	Upgrader
	UserReader             // history visibility: see the block below
	MembershipAPI          // restricted joins and forgotten rooms: see the block below
	FederationInputQuerier // federation transactions: see the block at the end
	SpaceReader            // space hierarchy and room summaries (spaces.go)
}

// ---- Published room directory and room upgrades (roomserver/directory.go,
// roomserver/upgrade.go) ----

// PublicRoom is a room as the published room directory shows it.
type PublicRoom struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"` // plain text; "" when none
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	JoinRule         string `json:"join_rule,omitempty"` // "" when the room has no join rules event
	RoomType         string `json:"room_type,omitempty"` // the create event's type, "" when none
	NumJoinedMembers int    `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
}

// PublicRoomsFilter narrows the published room directory.
type PublicRoomsFilter struct {
	// SearchTerm, when set, must occur in the name, topic or canonical
	// alias, ignoring case.
	SearchTerm string
	// RoomTypes, when non-empty, keeps only rooms of these types; "" stands
	// for rooms without a type.
	RoomTypes []string
}

// Directory is the published room directory and the permission checks
// its endpoints need.
type Directory interface {
	// SetPublished lists or unlists a room; ErrRoomNotFound.
	SetPublished(ctx context.Context, roomID string, published bool) error
	// Published reports whether a room is listed; ErrRoomNotFound.
	Published(ctx context.Context, roomID string) (bool, error)
	// PublicRooms returns the listed rooms that match the filter, most
	// joined members first, then by room ID.
	PublicRooms(ctx context.Context, filter PublicRoomsFilter) ([]PublicRoom, error)
	// CanSendState reports whether the auth rules would let the user send
	// a state event of this type (empty state key) in the room now.
	CanSendState(ctx context.Context, roomID, userID, eventType string) (bool, error)
	// IsRoomCreator reports whether the user created the room (or is one
	// of its additional creators in room version 12).
	IsRoomCreator(ctx context.Context, roomID, userID string) (bool, error)
}

// UpgradeRoomRequest asks to replace a room by a new one of another version.
type UpgradeRoomRequest struct {
	RoomID     string
	UserID     string // the local user upgrading, who needs power to send m.room.tombstone
	NewVersion gomatrixserverlib.RoomVersion
	// AdditionalCreators of the new room, for versions that have them.
	AdditionalCreators []string
}

// Upgrader upgrades rooms.
type Upgrader interface {
	// UpgradeRoom creates the replacement room, copies the old room's
	// transferable state, moves its aliases and directory listing, and
	// tombstones the old room. It returns the new room's ID;
	// ErrUnsupportedRoomVersion, ErrRoomNotFound, *NotAllowedError.
	UpgradeRoom(ctx context.Context, req UpgradeRoomRequest) (string, error)
}

// ---- Reading rooms as a user: history visibility (roomserver/visibility.go,
// roomserver/members.go, roomserver/timestamp.go) ----

// ReadableState is the state of a room that a user may read.
type ReadableState struct {
	// Snapshot is the state, for StateAt and StateEventAt.
	Snapshot int64
	// Current is true for the room's current state (the user is joined, or
	// the room is world_readable); otherwise Snapshot is the state when the
	// user last left.
	Current bool
}

// UserReader reads rooms the way the history visibility rules let a user
// see them.
type UserReader interface {
	// VisibleEvents returns, in order, the events the user may see: by the
	// history visibility and the user's membership at each event. In rooms
	// the user forgot only world_readable events are left. Events the
	// server does not have (or has only as outliers) are left out.
	VisibleEvents(ctx context.Context, userID string, events []gomatrixserverlib.PDU) ([]gomatrixserverlib.PDU, error)
	// ReadableState returns the state of the room the user may read;
	// *NotAllowedError when the user was never joined to (or forgot) a room
	// that is not world_readable; ErrRoomNotFound.
	ReadableState(ctx context.Context, roomID, userID string) (ReadableState, error)
	// StateEventAt returns one event of a state snapshot, or nil.
	StateEventAt(ctx context.Context, snapshot int64, eventType, stateKey string) (gomatrixserverlib.PDU, error)
	// EventAtTimestamp returns the event closest to ts (milliseconds) that
	// the user may see: at or after ts when forward, else at or before it.
	// ErrEventNotFound when there is none, ErrRoomNotFound.
	EventAtTimestamp(ctx context.Context, roomID, userID string, ts int64, forward bool) (gomatrixserverlib.PDU, error)
}

// ---- Room membership: restricted joins and forgotten rooms
// (roomserver/membership.go) ----

// MembershipAPI is what the membership endpoints need besides SendEvent.
type MembershipAPI interface {
	// JoinAuthoriser returns the user to name in the content's
	// join_authorised_via_users_server when userID joins a room whose join
	// rule is restricted (or knock_restricted) in a room version that
	// supports it: a joined local member with the power to invite. It
	// returns "" when the join needs none (other join rules, or the user is
	// invited or joined). *NotAllowedError when the user is joined to none
	// of the rooms the join rules allow, or no local member can authorise
	// the join (NoLocalAuthoriser set); ErrRoomNotFound.
	JoinAuthoriser(ctx context.Context, roomID, userID string) (string, error)
	// ForgetRoom records that the user forgot a room they have left or
	// been banned from, until their membership next changes (rejoining, a
	// new invite or knock, or a later kick or ban). false when their
	// membership is join, invite or knock, or they were never in the room;
	// ErrRoomNotFound.
	ForgetRoom(ctx context.Context, roomID, userID string) (bool, error)
	// ForgottenRooms lists the rooms the user has forgotten.
	ForgottenRooms(ctx context.Context, userID string) ([]string, error)
	// RoomForgotten reports whether the user has forgotten the room;
	// ErrRoomNotFound.
	RoomForgotten(ctx context.Context, roomID, userID string) (bool, error)
}

// --- Events from other servers (federation) ---

// MissingPrevEventsError says an event's prev events are unknown (or known
// only without their state): the caller should fetch them
// (/get_missing_events) or the state before the event (/state_ids).
type MissingPrevEventsError struct{ EventIDs []string }

func (e *MissingPrevEventsError) Error() string {
	return fmt.Sprintf("missing prev events %v", e.EventIDs)
}

// InputStatus is what became of an event from another server.
type InputStatus int

const (
	InputAccepted InputStatus = iota
	// InputRejected events failed the auth rules at their own state.
	InputRejected
	// InputSoftFailed events passed at their own state but not at the
	// room's current state; they are kept but not served.
	InputSoftFailed
)

// InputResult reports one remote event's fate.
type InputResult struct {
	Status InputStatus
	// Reason says why it was rejected or soft-failed.
	Reason string
}

// RemoteInputter takes events that the federation API has already checked
// for format, hashes and signatures.
type RemoteInputter interface {
	// InputRemoteEvent stores an event whose prev events are stored with
	// their state; *MissingPrevEventsError otherwise.
	InputRemoteEvent(ctx context.Context, pdu gomatrixserverlib.PDU) (InputResult, error)
	// InputOutliers stores events known only as state or auth events of
	// others (from a join or a state fetch), each checked against its own
	// auth events; they are not part of the timeline. Order does not matter.
	InputOutliers(ctx context.Context, pdus []gomatrixserverlib.PDU) error
	// InputEventWithState stores an event with the state before it as given
	// (events stored first with InputOutliers): the event of a join through
	// another server, or an event after a gap that could not be filled.
	InputEventWithState(ctx context.Context, pdu gomatrixserverlib.PDU, state []gomatrixserverlib.PDU) (InputResult, error)
	// InputRejectedEvent stores an event that failed the auth rules at its
	// auth events as rejected (never served nor part of a state), so that
	// later events may still cite it as a prev event: at the state after
	// its prev events when known, else without state.
	InputRejectedEvent(ctx context.Context, pdu gomatrixserverlib.PDU, reason string) error
}

// ---- Reading rooms as another server: the federation read endpoints
// (/backfill, /get_missing_events, /state, /state_ids, /event, /event_auth,
// /timestamp_to_event, /query/directory) and server ACLs
// (roomserver/federation_reads.go, roomserver/federation_acl.go) ----

// FederationReader reads rooms the way the history visibility rules and
// server ACLs let another server see them. Servers are named as in user
// IDs (with any port).
type FederationReader interface {
	// ServerCanSee reports for each event whether the server may see it:
	// whether one of its users could, by the spec's rules at the state
	// before the event (world_readable; a user joined then; invited then
	// in an invited room; in a shared room, a user joined then or now),
	// with the before-or-after rule for history visibility events and the
	// server's users' own membership events. Events judged on the room's
	// current state: outliers (no state known). Never visible: rejected,
	// soft-failed and unknown events.
	ServerCanSee(ctx context.Context, server string, events []gomatrixserverlib.PDU) ([]bool, error)
	// ServerParticipates reports whether a user of the server is joined
	// or invited now, or the room is world_readable now; ErrRoomNotFound.
	ServerParticipates(ctx context.Context, roomID, server string) (bool, error)
	// ServerMayReadStateAt reports whether the server had a joined user
	// in the state before the event (or the event is the join of one of
	// its users), or the room was world_readable there. ErrEventNotFound
	// for events not in the room or whose state is unknown (outliers).
	ServerMayReadStateAt(ctx context.Context, roomID, eventID, server string) (bool, error)
	// ServerACLAllows applies the room's current m.room.server_acl to a
	// server name; true when there is none. ErrRoomNotFound.
	ServerACLAllows(ctx context.Context, roomID, server string) (bool, error)
	// ResidentServers lists the servers of the room's joined members,
	// sorted; ErrRoomNotFound.
	ResidentServers(ctx context.Context, roomID string) ([]string, error)
	// BackfillEvents walks back from the given events along prev_events,
	// deepest first, and returns up to limit events (the given ones
	// included), deepest first. Unknown events, events of other rooms,
	// rejected and soft-failed events are skipped. ErrRoomNotFound.
	BackfillEvents(ctx context.Context, roomID string, from []string, limit int) ([]gomatrixserverlib.PDU, error)
	// MissingEventsBetween walks breadth-first from the prev_events of
	// latest, never into earliest or below minDepth, and returns up to
	// limit events, oldest (least deep) first. ErrRoomNotFound.
	MissingEventsBetween(ctx context.Context, roomID string, earliest, latest []string, limit int, minDepth int64) ([]gomatrixserverlib.PDU, error)
	// StateBeforeEventWithAuthChain returns the state before an event of
	// the room and the auth chain of that state. ErrEventNotFound for
	// events not in the room or whose state is unknown.
	StateBeforeEventWithAuthChain(ctx context.Context, roomID, eventID string) (stateEvents, authChain []gomatrixserverlib.PDU, err error)
	// EventAuthChain returns the auth chain of an event of the room (its
	// auth events, theirs, and so on, and the create event);
	// ErrEventNotFound.
	EventAuthChain(ctx context.Context, roomID, eventID string) ([]gomatrixserverlib.PDU, error)
	// EventAtTimestampForServer is EventAtTimestamp for what a server may
	// see (ServerCanSee).
	EventAtTimestampForServer(ctx context.Context, roomID, server string, ts int64, forward bool) (gomatrixserverlib.PDU, error)
}

// ---- Federation transactions: what the inbound transaction handler asks
// around InputRemoteEvent (roomserver/federationinput.go). The sender and
// the handler also use FederationReader's ResidentServers and
// ServerACLAllows. ----

// FederationInputQuerier finds what an event from another server lacks.
type FederationInputQuerier interface {
	// ForwardExtremities returns the IDs of the room's forward
	// extremities, deepest first; ErrRoomNotFound.
	ForwardExtremities(ctx context.Context, roomID string) ([]string, error)
	// StoredEvents returns, by ID, the events among eventIDs stored in any
	// form (outliers, rejected and soft-failed events too); those left out
	// are unknown. At most 10000 IDs at once.
	StoredEvents(ctx context.Context, eventIDs []string) (map[string]gomatrixserverlib.PDU, error)
	// CheckAuthEvents applies the auth rules to an event at the auth
	// events it names (the spec's check 4 on receipt of a PDU). It returns
	// the auth events not stored, for the caller to fetch first, or a
	// *NotAllowedError when the event must be rejected (an auth event
	// rejected, of another room, listed twice for one type and state key,
	// or not one the auth events selection names; or the rules refuse it).
	CheckAuthEvents(ctx context.Context, pdu gomatrixserverlib.PDU) (missing []string, err error)
	// MissingPrevEvents returns the event's prev events whose state is not
	// known (unknown, outliers, rejected without state): the gap
	// InputRemoteEvent would report.
	MissingPrevEvents(ctx context.Context, pdu gomatrixserverlib.PDU) ([]string, error)
}

// ---- Membership handshakes with other servers: make_join/send_join,
// make_leave/send_leave, make_knock/send_knock and invites, in both
// directions (roomserver/federation_membership.go). The federation API
// also uses RemoteInputter and FederationReader's ResidentServers and
// StateBeforeEventWithAuthChain. ----

// FederationMembership is what the membership handshakes need from the
// roomserver.
type FederationMembership interface {
	// MembershipTemplate builds a remote user's m.room.member event about
	// themselves with the given content at the room's current state and
	// checks it against the auth rules there (*NotAllowedError); it
	// returns the event JSON without hashes, signatures and event ID, for
	// make_join, make_leave and make_knock, and the room version.
	// ErrRoomNotFound.
	MembershipTemplate(ctx context.Context, roomID, userID string, content json.RawMessage) (json.RawMessage, gomatrixserverlib.RoomVersion, error)
	// BuildMembershipEvent builds and signs a local user's m.room.member
	// event at the room's current state and checks it against the auth
	// rules, without storing it: an invite of a remote user, which the
	// invitee's server signs before it is stored. *NotAllowedError,
	// *BadEventError, ErrRoomNotFound.
	BuildMembershipEvent(ctx context.Context, ev NewEvent) (gomatrixserverlib.PDU, error)
	// InputRemoteJoin stores a local user's join made through another
	// server with the state before it (stored first with InputOutliers).
	// Unlike InputEventWithState it does not soft-fail the join against
	// a state left from an earlier stay in the room, whose forward
	// extremities it drops when no local user was joined.
	InputRemoteJoin(ctx context.Context, join gomatrixserverlib.PDU, state []gomatrixserverlib.PDU) (InputResult, error)
	// InputOutOfBandMembership stores a membership event about a local
	// user in a room this server may not be in: an invite from another
	// server (with unsigned.invite_room_state), or a knock (with
	// unsigned.knock_room_state) or leave sent through another server.
	// When a local user is joined and the event's prev events are known it
	// is input like InputRemoteEvent (*NotAllowedError when refused);
	// otherwise it is stored without state, becomes the user's membership
	// and enters the output stream adding itself to the room's current
	// state and removing the user's previous membership event (the
	// roomserver's own state snapshot is untouched). The room's row is
	// made if needed. Storing an event twice changes nothing.
	InputOutOfBandMembership(ctx context.Context, pdu gomatrixserverlib.PDU) error
	// RetireMembership ends a local user's invite or knock in a room this
	// server is not in without telling any server (none could be
	// reached): a leave built on top of it, stored out of band and never
	// sent. *NotAllowedError when the user is not invited or knocking;
	// ErrRoomNotFound.
	RetireMembership(ctx context.Context, roomID, userID, reason string) (gomatrixserverlib.PDU, error)
}
