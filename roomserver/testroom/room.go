// Package testroom builds rooms of real signed, hashed PDUs for tests, in
// any room version that gomatrixserverlib knows:
//
//	a := testroom.NewServer(t, "a.test")
//	alice, bob := a.User("alice"), a.User("bob")
//	room := testroom.New(t, "12", alice).Join(bob).Send(alice, "hi")
//
// Every event gets the right prev_events (the head of the Room handle it was
// built on), depth, and auth_events chosen from the state before it (room
// version 12 leaves the create event out: the room ID names it). Every event
// is checked with gomatrixserverlib.Allowed against that state, and a test
// fails at the step that built an event the auth rules reject, unless the
// step asked for that with Rejected().
//
// A Room is a handle on a shared event graph: Fork and At give further
// handles, so a test can build concurrent branches and hand their states to
// state resolution. State is computed by simple application of each event to
// the state after its prev event; nothing here resolves state, except through
// a resolver given with WithResolver when an event has several prev events.
package testroom

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Resolver resolves the states after several prev events into the state
// before an event that has them all as prev events. stateres.Resolve has
// this signature.
type Resolver func(
	ctx context.Context,
	version gomatrixserverlib.RoomVersion,
	stateSets [][]gomatrixserverlib.PDU,
	authChain func(ctx context.Context, eventIDs []string) ([]gomatrixserverlib.PDU, error),
	isRejected func(eventID string) bool,
) ([]gomatrixserverlib.PDU, error)

// StartTime is the origin_server_ts of the create event of the first room
// a test makes; the Nth room starts N-1 days later, so that no two rooms of
// a test are the same room. Each further event is one second later than the
// one built before it, in any branch, unless WithTimestamp says otherwise.
// Server keys are fixed too, so a test builds the same events (and, from
// room version 3 on, the same event IDs) every time it runs.
var StartTime = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// roomsPerTest counts the rooms each test (by name) has made.
var roomsPerTest sync.Map // test name -> *atomic.Int64

// graph is what all handles on one room share.
type graph struct {
	version  gomatrixserverlib.RoomVersion
	impl     gomatrixserverlib.IRoomVersion
	roomID   string
	creator  *User
	resolver Resolver

	events   []gomatrixserverlib.PDU
	byID     map[string]gomatrixserverlib.PDU
	before   map[string]State // state before each event
	after    map[string]State // state after each event
	rejected map[string]bool
	clock    time.Time
}

// A Room is a handle on a room's event graph: it knows where the next event
// goes (its head, the prev_events of the next event) and the state there.
// Methods that build an event move the handle to that event.
type Room struct {
	t     testing.TB
	g     *graph
	head  []string
	state State
	last  gomatrixserverlib.PDU
}

type roomConfig struct {
	joinRule           string
	historyVisibility  string
	additionalCreators []*User
	powerLevels        any
	resolver           Resolver
}

// A RoomOption changes how New creates the room.
type RoomOption func(*roomConfig)

// JoinRule sets the initial m.room.join_rules (default "public").
func JoinRule(rule string) RoomOption { return func(c *roomConfig) { c.joinRule = rule } }

// HistoryVisibility sets the initial m.room.history_visibility (default "shared").
func HistoryVisibility(v string) RoomOption {
	return func(c *roomConfig) { c.historyVisibility = v }
}

// AdditionalCreators lists more creators in the create event (room version
// 12 and later give them the creator's unlimited power). They still have to
// join the room.
func AdditionalCreators(users ...*User) RoomOption {
	return func(c *roomConfig) { c.additionalCreators = append(c.additionalCreators, users...) }
}

// InitialPowerLevels replaces the content of the initial m.room.power_levels.
func InitialPowerLevels(content any) RoomOption {
	return func(c *roomConfig) { c.powerLevels = content }
}

// WithResolver sets how the state before an event with several prev events
// is found. Without one, it is the union of the states after the prev
// events, taking each (type, state_key) from the first prev event that has it.
func WithResolver(r Resolver) RoomOption { return func(c *roomConfig) { c.resolver = r } }

type eventConfig struct {
	prevEvents []string
	authEvents []string
	timestamp  time.Time
	rejected   bool
	lenient    bool
	cosigners  []*Server
}

// An EventOption changes how one event is built.
type EventOption func(*eventConfig)

// WithPrevEvents builds the event on these prev events instead of the
// handle's head; the state before it is the state after them. The handle
// moves to the new event.
func WithPrevEvents(ids ...string) EventOption {
	return func(c *eventConfig) { c.prevEvents = slices.Clone(ids) }
}

// WithAuthEvents sets auth_events instead of choosing them from the state
// (for building events with wrong auth events; usually with Rejected).
func WithAuthEvents(ids ...string) EventOption {
	return func(c *eventConfig) { c.authEvents = append([]string{}, ids...) }
}

// WithTimestamp sets origin_server_ts.
func WithTimestamp(ts time.Time) EventOption { return func(c *eventConfig) { c.timestamp = ts } }

// Rejected builds an event that the auth rules reject at the state before it
// (the test fails if they allow it). The event is recorded and becomes the
// handle's head, but it changes no state and IsRejected reports it.
func Rejected() EventOption { return func(c *eventConfig) { c.rejected = true } }

// Lenient builds an event gomatrixserverlib calls invalid but persistable
// (a state key over 255 bytes but not 255 code points, in room versions
// that counted code points).
func Lenient() EventOption { return func(c *eventConfig) { c.lenient = true } }

// StateKey returns a pointer to s, for Event's stateKey argument.
func StateKey(s string) *string { return &s }

// New creates a room of the given version ("1" … "12") with the usual
// initial events: m.room.create, the creator's join, m.room.power_levels
// (the creator at 100, except in versions where creators have unlimited
// power and must not be listed), m.room.join_rules and
// m.room.history_visibility.
func New(t testing.TB, version string, creator *User, opts ...RoomOption) *Room {
	t.Helper()
	cfg := roomConfig{joinRule: spec.Public, historyVisibility: "shared"}
	for _, o := range opts {
		o(&cfg)
	}
	impl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		t.Fatalf("testroom.New: %v", err)
	}
	g := &graph{
		version:  impl.Version(),
		impl:     impl,
		creator:  creator,
		resolver: cfg.resolver,
		byID:     map[string]gomatrixserverlib.PDU{},
		before:   map[string]State{},
		after:    map[string]State{},
		rejected: map[string]bool{},
	}
	counter, loaded := roomsPerTest.LoadOrStore(t.Name(), new(atomic.Int64))
	if !loaded {
		name := t.Name()
		t.Cleanup(func() { roomsPerTest.Delete(name) }) // so -count=N repeats the same rooms
	}
	n := counter.(*atomic.Int64).Add(1)
	g.clock = StartTime.Add(time.Duration(n-1) * 24 * time.Hour)
	if !impl.DomainlessRoomIDs() {
		g.roomID = fmt.Sprintf("!room%d:%s", n, creator.Server.Name)
	}
	r := &Room{t: t, g: g, state: State{}}

	createContent := map[string]any{"room_version": version}
	if !isV11OrLater(impl) {
		createContent["creator"] = creator.ID()
	}
	if len(cfg.additionalCreators) > 0 {
		ids := make([]string, len(cfg.additionalCreators))
		for i, u := range cfg.additionalCreators {
			ids[i] = u.ID()
		}
		createContent["additional_creators"] = ids
	}
	r.Event(creator, spec.MRoomCreate, StateKey(""), createContent)
	if impl.DomainlessRoomIDs() {
		g.roomID = "!" + r.last.EventID()[1:]
	}
	r.Join(creator)
	pl := cfg.powerLevels
	if pl == nil {
		pl = defaultPowerLevels(impl, creator)
	}
	r.SetPowerLevels(creator, pl)
	r.SetState(creator, spec.MRoomJoinRules, "", map[string]any{"join_rule": cfg.joinRule})
	r.SetState(creator, spec.MRoomHistoryVisibility, "", map[string]any{"history_visibility": cfg.historyVisibility})
	return r
}

// isV11OrLater tells versions whose create event has no "creator" key.
func isV11OrLater(impl gomatrixserverlib.IRoomVersion) bool {
	switch impl.Version() {
	case "1", "2", "3", "4", "5", "6", "7", "8", "9", "10":
		return false
	}
	return true
}

func defaultPowerLevels(impl gomatrixserverlib.IRoomVersion, creator *User) map[string]any {
	users := map[string]any{}
	if !impl.PrivilegedCreators() {
		users[creator.ID()] = 100
	}
	return map[string]any{
		"users":          users,
		"users_default":  0,
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         0,
		"events": map[string]any{
			spec.MRoomName:              50,
			spec.MRoomPowerLevels:       100,
			spec.MRoomHistoryVisibility: 100,
			spec.MRoomCanonicalAlias:    50,
			spec.MRoomAvatar:            50,
			"m.room.tombstone":          100,
			"m.room.server_acl":         100,
			spec.MRoomEncryption:        100,
		},
	}
}

// ID is the room ID. In room version 12 it is "!" and the create event's
// reference hash.
func (r *Room) ID() string { return r.g.roomID }

// Version is the room version.
func (r *Room) Version() gomatrixserverlib.RoomVersion { return r.g.version }

// Creator is the user who created the room.
func (r *Room) Creator() *User { return r.g.creator }

// Events returns every event of the room in the order they were built.
func (r *Room) Events() []gomatrixserverlib.PDU { return slices.Clone(r.g.events) }

// EventByID returns the event with the given ID; the test fails if the room
// has no such event.
func (r *Room) EventByID(id string) gomatrixserverlib.PDU {
	r.t.Helper()
	ev, ok := r.g.byID[id]
	if !ok {
		r.t.Fatalf("testroom: room %s has no event %s", r.g.roomID, id)
	}
	return ev
}

// Last returns the last event built through this handle.
func (r *Room) Last() gomatrixserverlib.PDU { return r.last }

// Head returns the prev_events the next event built through this handle gets.
func (r *Room) Head() []string { return slices.Clone(r.head) }

// State returns the state the next event built through this handle sees.
func (r *Room) State() State { return r.state.Clone() }

// StateBefore returns the state before the event with the given ID.
func (r *Room) StateBefore(id string) State {
	r.t.Helper()
	r.EventByID(id)
	return r.g.before[id].Clone()
}

// StateAfter returns the state after the event with the given ID.
func (r *Room) StateAfter(id string) State {
	r.t.Helper()
	r.EventByID(id)
	return r.g.after[id].Clone()
}

// IsRejected reports whether an event was built with Rejected(). It has the
// signature state resolution wants for its isRejected argument.
func (r *Room) IsRejected(id string) bool { return r.g.rejected[id] }

// ForwardExtremities returns the events of the whole graph that no other
// event names in its prev_events, in the order they were built.
func (r *Room) ForwardExtremities() []string {
	referenced := map[string]bool{}
	for _, ev := range r.g.events {
		for _, p := range ev.PrevEventIDs() {
			referenced[p] = true
		}
	}
	var ids []string
	for _, ev := range r.g.events {
		if !referenced[ev.EventID()] {
			ids = append(ids, ev.EventID())
		}
	}
	return ids
}

// AuthChain returns the auth chain of the given events: their auth events,
// and theirs, transitively (in room version 12 the create event is among
// them though no auth_events list names it), in the order they were built.
// It has the signature state resolution wants for its authChain argument.
func (r *Room) AuthChain(_ context.Context, eventIDs []string) ([]gomatrixserverlib.PDU, error) {
	seen := map[string]bool{}
	stack := []gomatrixserverlib.PDU{}
	for _, id := range eventIDs {
		ev, ok := r.g.byID[id]
		if !ok {
			return nil, fmt.Errorf("testroom: unknown event %s", id)
		}
		stack = append(stack, ev)
	}
	for len(stack) > 0 {
		ev := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, id := range ev.AuthEventIDs() {
			if seen[id] {
				continue
			}
			authEv, ok := r.g.byID[id]
			if !ok {
				return nil, fmt.Errorf("testroom: event %s has unknown auth event %s", ev.EventID(), id)
			}
			seen[id] = true
			stack = append(stack, authEv)
		}
	}
	var chain []gomatrixserverlib.PDU
	for _, ev := range r.g.events {
		if seen[ev.EventID()] {
			chain = append(chain, ev)
		}
	}
	return chain, nil
}

// Fork returns a new handle at the same place as r; events built through
// either do not move the other.
func (r *Room) Fork() *Room {
	return &Room{t: r.t, g: r.g, head: slices.Clone(r.head), state: r.state, last: r.last}
}

// At returns a new handle whose next event follows the given event.
func (r *Room) At(eventID string) *Room {
	r.t.Helper()
	ev := r.EventByID(eventID)
	return &Room{t: r.t, g: r.g, head: []string{eventID}, state: r.g.after[eventID], last: ev}
}

// Merge makes r's next event follow the heads of r and of others (a merge
// of branches). The state it sees is the resolver's (WithResolver), or else
// the union of the branches' states with r's taking precedence.
func (r *Room) Merge(others ...*Room) *Room {
	r.t.Helper()
	head := slices.Clone(r.head)
	for _, o := range others {
		for _, id := range o.head {
			if !slices.Contains(head, id) {
				head = append(head, id)
			}
		}
	}
	state, err := r.g.stateAt(head)
	if err != nil {
		r.t.Fatalf("testroom: merge: %v", err)
	}
	r.head, r.state = head, state
	return r
}

// stateAt returns the state before an event whose prev events are prev.
func (g *graph) stateAt(prev []string) (State, error) {
	for _, id := range prev {
		if _, ok := g.byID[id]; !ok {
			return nil, fmt.Errorf("unknown prev event %s", id)
		}
	}
	if len(prev) == 1 {
		return g.after[prev[0]], nil
	}
	if g.resolver != nil {
		sets := make([][]gomatrixserverlib.PDU, len(prev))
		for i, id := range prev {
			sets[i] = g.after[id].Events()
		}
		authChain := (&Room{g: g}).AuthChain
		resolved, err := g.resolver(context.Background(), g.version, sets, authChain, func(id string) bool { return g.rejected[id] })
		if err != nil {
			return nil, fmt.Errorf("resolving state at %v: %w", prev, err)
		}
		return StateFromEvents(resolved)
	}
	state := State{}
	for _, id := range prev {
		for k, ev := range g.after[id] {
			if _, ok := state[k]; !ok {
				state[k] = ev
			}
		}
	}
	return state, nil
}

// Event builds an event from sender, records it and moves the handle to it.
// stateKey is nil for a message event (see StateKey). The test fails if the
// event cannot be built or the auth rules do not allow it at the state
// before it (unless Rejected() says they must not).
func (r *Room) Event(sender *User, eventType string, stateKey *string, content any, opts ...EventOption) gomatrixserverlib.PDU {
	r.t.Helper()
	ev, err := r.build(sender, eventType, stateKey, content, opts)
	if err != nil {
		r.t.Fatalf("testroom: %s event from %s in room %s: %v", eventType, sender, r.g.roomID, err)
	}
	return ev
}

func (r *Room) build(sender *User, eventType string, stateKey *string, content any, opts []EventOption) (gomatrixserverlib.PDU, error) {
	var cfg eventConfig
	for _, o := range opts {
		o(&cfg)
	}
	g := r.g
	prev, before := r.head, r.state
	if cfg.prevEvents != nil {
		var err error
		prev = cfg.prevEvents
		if before, err = g.stateAt(prev); err != nil {
			return nil, err
		}
	}
	isCreate := eventType == spec.MRoomCreate && stateKey != nil && *stateKey == ""
	if isCreate != (len(g.events) == 0) {
		return nil, fmt.Errorf("the create event must be the first event and only the first")
	}
	depth := int64(1)
	for _, id := range prev {
		depth = max(depth, g.byID[id].Depth()+1)
	}
	contentJSON, err := json.Marshal(content)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID:   sender.ID(),
		RoomID:     g.roomID,
		Type:       eventType,
		StateKey:   stateKey,
		PrevEvents: append([]string{}, prev...),
		Depth:      depth,
		Content:    contentJSON,
	}
	provider, err := gomatrixserverlib.NewAuthEvents(before.Events())
	if err != nil {
		return nil, err
	}
	if cfg.authEvents != nil {
		proto.AuthEvents = cfg.authEvents
	} else {
		needed, err := gomatrixserverlib.StateNeededForProtoEvent(proto)
		if err != nil {
			return nil, fmt.Errorf("state needed: %w", err)
		}
		refs, err := needed.AuthEventReferences(provider)
		if err != nil {
			return nil, fmt.Errorf("auth events: %w", err)
		}
		if g.impl.DomainlessRoomIDs() && !isCreate {
			// The room ID names the create event; it must not be listed.
			createID := "$" + g.roomID[1:]
			refs = slices.DeleteFunc(refs, func(id string) bool { return id == createID })
		}
		proto.AuthEvents = refs
	}
	ts := cfg.timestamp
	if ts.IsZero() {
		ts = g.clock
		g.clock = g.clock.Add(time.Second)
	}
	s := sender.Server
	ev, err := g.impl.NewEventBuilderFromProtoEvent(proto).Build(ts, s.Name, s.KeyID, s.PrivateKey)
	var verr gomatrixserverlib.EventValidationError
	if cfg.lenient && errors.As(err, &verr) && verr.Persistable && ev != nil {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	for _, c := range cfg.cosigners {
		if c.Name != s.Name {
			ev = ev.Sign(string(c.Name), c.KeyID, c.PrivateKey)
		}
	}
	if _, dup := g.byID[ev.EventID()]; dup {
		return nil, fmt.Errorf("event %s built twice (same content and timestamp?)", ev.EventID())
	}

	authErr := gomatrixserverlib.Allowed(ev, provider, userIDForSender)
	after := before
	switch {
	case cfg.rejected && authErr == nil:
		return nil, fmt.Errorf("built with Rejected() but the auth rules allow it")
	case !cfg.rejected && authErr != nil:
		return nil, fmt.Errorf("not allowed at the state before it: %w", authErr)
	case !cfg.rejected:
		after = before.apply(ev)
	}
	id := ev.EventID()
	g.events = append(g.events, ev)
	g.byID[id] = ev
	g.before[id] = before
	g.after[id] = after
	g.rejected[id] = cfg.rejected
	r.head, r.state, r.last = []string{id}, after, ev
	return ev, nil
}

func (r *Room) member(sender, target *User, membership string, opts []EventOption) *Room {
	r.t.Helper()
	if membership == spec.Invite {
		opts = append(opts, func(c *eventConfig) { c.cosigners = append(c.cosigners, target.Server) })
	}
	r.Event(sender, spec.MRoomMember, StateKey(target.ID()), map[string]any{"membership": membership}, opts...)
	return r
}

// Join makes user join the room.
func (r *Room) Join(user *User, opts ...EventOption) *Room {
	r.t.Helper()
	return r.member(user, user, spec.Join, opts)
}

// Leave makes user leave the room (or reject an invite).
func (r *Room) Leave(user *User, opts ...EventOption) *Room {
	r.t.Helper()
	return r.member(user, user, spec.Leave, opts)
}

// Invite makes by invite user; the invitee's server signs the event too.
func (r *Room) Invite(by, user *User, opts ...EventOption) *Room {
	r.t.Helper()
	return r.member(by, user, spec.Invite, opts)
}

// Ban makes by ban user.
func (r *Room) Ban(by, user *User, opts ...EventOption) *Room {
	r.t.Helper()
	return r.member(by, user, spec.Ban, opts)
}

// Kick makes by kick user (or unban them).
func (r *Room) Kick(by, user *User, opts ...EventOption) *Room {
	r.t.Helper()
	return r.member(by, user, spec.Leave, opts)
}

// Send sends an m.text message.
func (r *Room) Send(user *User, body string, opts ...EventOption) *Room {
	r.t.Helper()
	r.Event(user, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body}, opts...)
	return r
}

// SetState sends a state event.
func (r *Room) SetState(user *User, eventType, stateKey string, content any, opts ...EventOption) *Room {
	r.t.Helper()
	r.Event(user, eventType, StateKey(stateKey), content, opts...)
	return r
}

// SetPowerLevels sends m.room.power_levels with the given content.
func (r *Room) SetPowerLevels(user *User, content any, opts ...EventOption) *Room {
	r.t.Helper()
	return r.SetState(user, spec.MRoomPowerLevels, "", content, opts...)
}

// SetUserLevel sends m.room.power_levels: the current content with
// users[target] set to level.
func (r *Room) SetUserLevel(by, target *User, level int64, opts ...EventOption) *Room {
	r.t.Helper()
	content := r.PowerLevelsContent()
	users, _ := content["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	users[target.ID()] = level
	content["users"] = users
	return r.SetPowerLevels(by, content, opts...)
}

// PowerLevelsContent returns a copy of the content of the current
// m.room.power_levels event (empty if there is none).
func (r *Room) PowerLevelsContent() map[string]any {
	r.t.Helper()
	content := map[string]any{}
	if ev := r.state.Get(spec.MRoomPowerLevels, ""); ev != nil {
		if err := json.Unmarshal(ev.Content(), &content); err != nil {
			r.t.Fatalf("testroom: power levels content: %v", err)
		}
	}
	return content
}
