package syncapi

import (
	"context"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

// memberFeed stores testroom events through a real consumer, as the
// roomserver's stream would hand them over.
type memberFeed struct {
	t   *testing.T
	c   *consumer
	pos int64
}

func (f *memberFeed) put(ev gomatrixserverlib.PDU, adds, removes []string) {
	f.t.Helper()
	f.pos++
	out := rsapi.OutputEvent{Position: f.pos, RoomID: ev.RoomID().String(), Event: ev, AddsState: adds, RemovesState: removes}
	if _, err := f.c.consume(context.Background(), out); err != nil {
		f.t.Fatal(err)
	}
}

// newMemberFeed starts a consumer of local.test over db and stores the
// room's events so far through it.
func newMemberFeed(t *testing.T, db *storage.DB, r *testroom.Room) (*consumer, *memberFeed) {
	t.Helper()
	ctx := context.Background()
	if err := db.Migrate(ctx, component, migrations); err != nil {
		t.Fatal(err)
	}
	c, err := newConsumer(ctx, db, "local.test", roomEvents{r: r}, newNotifier())
	if err != nil {
		t.Fatal(err)
	}
	f := &memberFeed{t: t, c: c}
	for _, ev := range r.Events() {
		f.putLinear(r, ev)
	}
	return c, f
}

// putLinear stores an event that changes only its own state key.
func (f *memberFeed) putLinear(r *testroom.Room, ev gomatrixserverlib.PDU) {
	f.t.Helper()
	var removes []string
	if ev.StateKey() != nil {
		if prev := r.StateBefore(ev.EventID()).Get(ev.Type(), *ev.StateKey()); prev != nil {
			removes = []string{prev.EventID()}
		}
		f.put(ev, []string{ev.EventID()}, removes)
		return
	}
	f.put(ev, nil, nil)
}

// roomEvents serves a testroom's events as the roomserver's Event would.
type roomEvents struct {
	Roomserver
	r *testroom.Room
}

func (e roomEvents) Event(_ context.Context, id string) (*rsapi.Event, error) {
	if ev := e.r.EventByID(id); ev != nil {
		return &rsapi.Event{PDU: ev}, nil
	}
	return nil, rsapi.ErrEventNotFound
}

func joinedSorted(t *testing.T, m *localMembers, roomID string) []string {
	t.Helper()
	users, err := m.joined(context.Background(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(users)
	return users
}

// TestLocalMembersFollowMembership checks that the cached member set
// matches the stored state through joins, leaves, remote members and a
// state change that moves several members at once.
func TestLocalMembersFollowMembership(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		local, remote := testroom.NewServer(t, "local.test"), testroom.NewServer(t, "remote.test")
		alice, bob, carol := local.User("alice"), local.User("bob"), remote.User("carol")
		r := testroom.New(t, "10", alice)
		c, f := newMemberFeed(t, db, r)
		// Loaded from the database the first time.
		if got := joinedSorted(t, c.members, r.ID()); !slices.Equal(got, []string{alice.ID()}) {
			t.Fatalf("after create: %v", got)
		}
		f.putLinear(r, r.Join(bob).Last())
		f.putLinear(r, r.Join(carol).Last()) // remote users are not listeners here
		if got := joinedSorted(t, c.members, r.ID()); !slices.Equal(got, []string{alice.ID(), bob.ID()}) {
			t.Fatalf("after joins: %v", got)
		}
		// Display names (for push rules) follow profile changes, which
		// are member events that keep the membership.
		renamed := "Bobby"
		bobKey := bob.ID()
		f.putLinear(r, r.Event(bob, "m.room.member", &bobKey, map[string]any{"membership": "join", "displayname": renamed}))
		members, err := c.members.joinedMembers(ctx, r.ID())
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]string{}
		for _, lm := range members {
			names[lm.userID] = lm.displayName
		}
		if len(names) != 2 || names[bob.ID()] != renamed {
			t.Fatalf("after bob's rename: %v", names)
		}
		// ... as they are when loaded from the stored state.
		c.members.mu.Lock()
		delete(c.members.rooms, r.ID())
		c.members.mu.Unlock()
		if members, err = c.members.joinedMembers(ctx, r.ID()); err != nil {
			t.Fatal(err)
		}
		for _, lm := range members {
			if lm.userID == bob.ID() && lm.displayName != renamed {
				t.Fatalf("loaded display name %q, want %q", lm.displayName, renamed)
			}
		}
		f.putLinear(r, r.Leave(bob).Last())
		if got := joinedSorted(t, c.members, r.ID()); !slices.Equal(got, []string{alice.ID()}) {
			t.Fatalf("after leave: %v", got)
		}

		// A state change carrying another member (as after a fork) drops
		// the cached room, which is then read again from the stored state.
		bobJoin := r.Join(bob).Last()
		msg := r.Send(alice, "hello").Last()
		f.put(msg, []string{msg.EventID(), bobJoin.EventID()}, nil)
		if got := joinedSorted(t, c.members, r.ID()); !slices.Equal(got, []string{alice.ID(), bob.ID()}) {
			t.Fatalf("after a multi-event state change: %v", got)
		}

		// The targets for push before the event is stored include the
		// change the event makes.
		leave := r.Leave(bob).Last()
		after, ok, err := c.members.joinedAfter(ctx, rsapi.OutputEvent{RoomID: r.ID(), Event: leave, AddsState: []string{leave.EventID()}})
		if err != nil || !ok || len(after) != 1 || after[0].userID != alice.ID() {
			t.Fatalf("joinedAfter(leave) = %v, %v, %v", after, ok, err)
		}
	})
}

// Member counts for push rules are loaded once per room and dropped at
// every membership change; an event that changes state does not fill
// the cache.
func TestMemberCountsDroppedAtMembershipChanges(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		local := testroom.NewServer(t, "local.test")
		alice, bob := local.User("alice"), local.User("bob")
		r := testroom.New(t, "10", alice)
		c, f := newMemberFeed(t, db, r)
		loads := 0
		count := func(cacheable bool, n int) int {
			got, err := c.members.memberCount(r.ID(), cacheable, func() (int, error) { loads++; return n, nil })
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		if count(false, 1) != 1 || count(true, 1) != 1 || loads != 2 {
			t.Fatalf("a count from a state-changing event was kept (%d loads)", loads)
		}
		if count(true, 99) != 1 || loads != 2 {
			t.Fatal("the count was loaded again without a change")
		}
		f.putLinear(r, r.Send(alice, "hello").Last())
		if count(true, 99) != 1 {
			t.Fatal("a message dropped the count")
		}
		f.putLinear(r, r.Join(bob).Last())
		if count(true, 2) != 2 || loads != 3 {
			t.Fatalf("a join did not drop the count (%d loads)", loads)
		}
	})
}
