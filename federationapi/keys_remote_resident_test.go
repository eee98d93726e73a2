package federationapi

import (
	"context"
	"testing"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// blockingRooms answers ResidentServers only when released.
type blockingRooms struct {
	asked, release chan struct{}
}

func (blockingRooms) Memberships(context.Context, string) ([]rsapi.Membership, error) {
	return nil, nil
}

func (b blockingRooms) ResidentServers(context.Context, string) ([]string, error) {
	b.asked <- struct{}{}
	<-b.release
	return []string{"local.test"}, nil
}

// A "we are in the room" read that started before we left is not kept:
// else a device list could be cached again on its strength for seconds
// after the leave dropped it (keys_leave.go).
func TestResidentAnswerReadBeforeALeaveIsNotKept(t *testing.T) {
	rooms := blockingRooms{asked: make(chan struct{}), release: make(chan struct{})}
	fed := &FederationAPI{own: &ownKeys{name: "local.test"}}
	r := NewRemoteKeys(fed, rooms)
	done := make(chan bool)
	go func() {
		in, err := r.weAreIn(context.Background(), "!room:remote.test")
		if err != nil {
			t.Error(err)
		}
		done <- in
	}()
	<-rooms.asked
	r.forgetResident("!room:remote.test") // the leave, while the read is under way
	close(rooms.release)
	if !<-done {
		t.Fatal("the read itself should answer what it read")
	}
	r.mu.Lock()
	_, kept := r.resident["!room:remote.test"]
	r.mu.Unlock()
	if kept {
		t.Fatal("an answer read before the leave was kept")
	}
}
