package federationapi

import (
	"context"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
)

// Which joins announce a device list, and to which servers (keys_join.go).
func TestLocalJoinAnnouncement(t *testing.T) {
	ctx := context.Background()
	local, remote := testroom.NewServer(t, "local.test"), testroom.NewServer(t, "remote.test")
	alice, bob, rita := local.User("alice"), local.User("bob"), remote.User("rita")
	room := testroom.New(t, "10", alice, testroom.JoinRule("public"))
	other := testroom.New(t, "10", alice, testroom.JoinRule("public"))
	stream := newSenderStream()
	stream.servers[room.ID()] = []string{"local.test", "remote.test", "other.test"}
	stream.servers[other.ID()] = []string{"local.test", "remote.test"}
	s := &Sender{self: "local.test", rs: stream}

	out := func(ev interface{ EventID() string }, removes ...string) rsapi.OutputEvent {
		t.Helper()
		pdu := room.EventByID(ev.EventID())
		stream.add(pdu)
		return rsapi.OutputEvent{RoomID: room.ID(), Event: pdu, AddsState: []string{pdu.EventID()}, RemovesState: removes}
	}
	join := room.Join(bob).Last()
	for _, c := range []struct {
		name string
		out  rsapi.OutputEvent
		want bool
	}{
		{"a local user's first join", out(join), true},
		{"a profile change", out(room.Event(bob, spec.MRoomMember, testroom.StateKey(bob.ID()), map[string]any{"membership": "join", "displayname": "Bob"}), join.EventID()), false},
		{"a remote user's join", out(room.Join(rita).Last()), false},
		{"a message", out(room.Send(bob, "hi").Last()), false},
	} {
		_, got, err := s.isLocalJoin(ctx, c.out)
		if err != nil || got != c.want {
			t.Errorf("%s: isLocalJoin = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	stale := out(room.Leave(bob).Last())
	stale.AddsState = nil
	if _, got, _ := s.isLocalJoin(ctx, stale); got {
		t.Error("a leave counts as a join")
	}

	// remote.test shares the other room with bob already: only other.test is new.
	got, err := s.newServers(ctx, bob.ID(), room.ID(), []spec.ServerName{"other.test", "remote.test"})
	if err != nil || !slices.Equal(got, []spec.ServerName{"other.test"}) {
		t.Fatalf("newServers = %v, %v; want [other.test]", got, err)
	}
}
