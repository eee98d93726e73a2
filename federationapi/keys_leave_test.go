package federationapi_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// Cached device lists of other servers' users are dropped as soon as no
// local user shares a room with them (keys_leave.go), so that a list that
// stopped being updated is not served once a room is shared again.

// ksWaitUncached waits until s no longer caches userID's list.
func ksWaitUncached(t *testing.T, s *testserver.Server, userID, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := ksStreamID(t, s, userID); !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ksCachedRoomMates are alice on a and bob on b in a room of hers, with
// b caching her device list.
func ksCachedRoomMates(t *testing.T, opts ...testserver.Option) (a, b *testserver.Server, alice, bob *testserver.User, roomID string) {
	t.Helper()
	a, b, alice, bob = ksRoomMates(t, opts...)
	ksDevice(t, a, alice, 1)
	ksQuery(t, b, bob, alice.UserID)
	if _, ok := ksStreamID(t, b, alice.UserID); !ok {
		t.Fatal("b did not cache the list of a room-mate")
	}
	roomID = a.MustOK("GET", "/_matrix/client/v3/joined_rooms", alice.AccessToken, nil).Get("joined_rooms.0").Str
	return a, b, alice, bob, roomID
}

// TestDeviceListForgottenWhenWeLeave: bob leaves alice's room, so b
// drops her list; she adds a device meanwhile (a does not tell b, which
// shares no room with her); when bob joins again, b asks a afresh.
func TestDeviceListForgottenWhenWeLeave(t *testing.T) {
	ksDatabases(t, func(t *testing.T, opts ...testserver.Option) {
		a, b, alice, bob, room := ksCachedRoomMates(t, opts...)
		b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", bob.AccessToken, map[string]any{})
		ksWaitUncached(t, b, alice.UserID, "b to drop alice's list after bob left")
		ksWaitMembers(t, a, alice, room, 1)
		laptop := a.Login("alice", "password1234")
		ksDevice(t, a, laptop, 1)

		b.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name="+url.QueryEscape(a.ServerName()), bob.AccessToken, map[string]any{})
		r := ksQueryUntil(t, b, bob, alice.UserID, "alice's new device on b", func(r gjson.Result) bool {
			return len(ksDevices(r, alice.UserID)) == 2
		})
		if len(r.Get("failures").Map()) != 0 {
			t.Fatalf("query: %s", r.Raw)
		}
	})
}

// TestDeviceListForgottenWhenTheyLeave: alice leaves the only room she
// shares with b's users, so b drops her list.
func TestDeviceListForgottenWhenTheyLeave(t *testing.T) {
	ksDatabases(t, func(t *testing.T, opts ...testserver.Option) {
		a, b, alice, _, room := ksCachedRoomMates(t, opts...)
		a.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", alice.AccessToken, map[string]any{})
		ksWaitUncached(t, b, alice.UserID, "b to drop alice's list after she left")
	})
}

// TestDeviceListForgottenWhenTheyJoin: alice joins another room of b's,
// so b drops her cached list and asks a afresh when next queried. Her
// leave and rejoin of a room may reach b's sender only after both are in
// the room's state; the leave then looks like no change, and only the
// join can drop a list that went stale while no room was shared
// (Complement's TestDeviceListUpdates/when_remote_user_rejoins_a_room).
func TestDeviceListForgottenWhenTheyJoin(t *testing.T) {
	ksDatabases(t, func(t *testing.T, opts ...testserver.Option) {
		a, b, alice, bob, _ := ksCachedRoomMates(t, opts...)
		other := b.MustOK("POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").Str
		a.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(other)+"?server_name="+url.QueryEscape(b.ServerName()), alice.AccessToken, map[string]any{})
		ksWaitUncached(t, b, alice.UserID, "b to drop alice's list after she joined another room")
		r := ksQueryUntil(t, b, bob, alice.UserID, "alice's device on b again", func(r gjson.Result) bool {
			return len(ksDevices(r, alice.UserID)) == 1
		})
		if len(r.Get("failures").Map()) != 0 {
			t.Fatalf("query: %s", r.Raw)
		}
	})
}
