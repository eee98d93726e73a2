package federationapi_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// TestDeviceListAnnouncedOnJoin: when alice (on a) joins a room on b,
// which shared no room with her, a sends b her device list
// (keys_join.go): b caches it without any query, bob's /sync names her
// in device_lists.changed, and b answers bob's /keys/query from the cache
// even with a gone.
func TestDeviceListAnnouncedOnJoin(t *testing.T) {
	ksDatabases(t, testDeviceListAnnouncedOnJoin)
}

func testDeviceListAnnouncedOnJoin(t *testing.T, opts ...testserver.Option) {
	servers := testserver.NewFederated(t, 2, opts...)
	a, b := servers[0], servers[1]
	alice, bob := a.Register("alice", "password1234"), b.Register("bob", "password1234")
	laptop := a.Login("alice", "password1234")
	phone := ksDevice(t, a, alice, 1)
	ksDevice(t, a, laptop, 1)

	roomID := b.MustOK("POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").Str
	since := ""
	txSyncUntil(t, b, bob, &since, "bob's room", func(r gjson.Result) bool { return r.Get("rooms.join." + gjson.Escape(roomID)).Exists() })
	if _, ok := ksStreamID(t, b, alice.UserID); ok {
		t.Fatal("b caches alice's list before sharing a room with her")
	}

	a.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(b.ServerName()), alice.AccessToken, map[string]any{})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if id, ok := ksStreamID(t, b, alice.UserID); ok && id > 0 {
			break // resynced: a real stream_id, not the 0 of a first query
		}
		if time.Now().After(deadline) {
			t.Fatal("b did not learn alice's device list when she joined")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ksChanged(t, b, bob, &since, alice.UserID, "alice in bob's device_lists.changed")

	a.Stop()
	r := ksQuery(t, b, bob, alice.UserID)
	if got := ksDevices(r, alice.UserID); len(got) != 2 || len(r.Get("failures").Map()) != 0 {
		t.Fatalf("b's answer about alice with a gone: devices %v: %s", got, r.Raw)
	}
	if k := r.Get("device_keys." + gjson.Escape(alice.UserID) + "." + gjson.Escape(alice.DeviceID) + ".keys." + gjson.Escape(phone.KeyID())).Str; k != phone.Ed25519.Public {
		t.Fatalf("b holds another key for alice's phone: %s", r.Raw)
	}
}

// TestDeviceListAnnouncedOnLocalRoomJoin: carol joins a room on her own
// server a that bob (on b) is in; b learns of her join and of her device
// list from a, possibly in one transaction, and caches the list.
func TestDeviceListAnnouncedOnLocalRoomJoin(t *testing.T) {
	ksDatabases(t, func(t *testing.T, opts ...testserver.Option) {
		a, b, alice, bob := ksRoomMates(t, opts...)
		carol := a.Register("carol", "password1234")
		ksDevice(t, a, carol, 1)
		roomID := a.MustOK("GET", "/_matrix/client/v3/joined_rooms", alice.AccessToken, nil).Get("joined_rooms.0").Str
		since := ""
		txSyncUntil(t, b, bob, &since, "bob's room", func(r gjson.Result) bool { return r.Get("rooms.join." + gjson.Escape(roomID)).Exists() })
		a.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), carol.AccessToken, map[string]any{})
		deadline := time.Now().Add(30 * time.Second)
		for {
			if id, ok := ksStreamID(t, b, carol.UserID); ok && id > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("b did not learn carol's device list when she joined")
			}
			time.Sleep(50 * time.Millisecond)
		}
		ksChanged(t, b, bob, &since, carol.UserID, "carol in bob's device_lists.changed")
	})
}

// TestDeviceListAnnouncedOnRejoin: b cached alice's list while bob shared
// a room with her, then stopped sharing it and so missed her new device;
// when she joins a room of bob's again, the announcement (prev_id naming
// a change b lacks) makes b resync instead of serving the stale list.
func TestDeviceListAnnouncedOnRejoin(t *testing.T) {
	ksDatabases(t, func(t *testing.T, opts ...testserver.Option) {
		a, b, alice, bob := ksRoomMates(t, opts...)
		ksDevice(t, a, alice, 1)
		if got := ksDevices(ksQuery(t, b, bob, alice.UserID), alice.UserID); len(got) != 1 {
			t.Fatalf("b's first answer about alice: %v", got)
		}
		if _, ok := ksStreamID(t, b, alice.UserID); !ok {
			t.Fatal("b did not cache the list of a room-mate")
		}

		first := a.MustOK("GET", "/_matrix/client/v3/joined_rooms", alice.AccessToken, nil).Get("joined_rooms.0").Str
		b.MustOK("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(first)+"/leave", bob.AccessToken, map[string]any{})
		ksWaitMembers(t, a, alice, first, 1)
		laptop := a.Login("alice", "password1234")
		ksDevice(t, a, laptop, 1) // b shares no room with alice: it is not told

		second := b.MustOK("POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{"preset": "public_chat"}).Get("room_id").Str
		a.MustOK("POST", "/_matrix/client/v3/join/"+url.PathEscape(second)+"?server_name="+url.QueryEscape(b.ServerName()), alice.AccessToken, map[string]any{})
		ksQueryUntil(t, b, bob, alice.UserID, "alice's new device on b", func(r gjson.Result) bool {
			return len(ksDevices(r, alice.UserID)) == 2
		})
	})
}

// ksWaitMembers waits until u's server counts n joined members in a room.
func ksWaitMembers(t *testing.T, s *testserver.Server, u *testserver.User, roomID string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := s.MustOK("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", u.AccessToken, nil)
		if len(r.Get("joined").Map()) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d members: %s", n, r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
