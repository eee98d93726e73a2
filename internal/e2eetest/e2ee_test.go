// Package e2eetest holds end-to-end encryption tests with a real
// encryption library as the client (mautrix-go's pure-Go goolm, see
// device_test.go), against one server and two federating ones. It has
// only tests.
package e2eetest

import (
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

const password = "correct horse battery"

// TestEncryptedRoomOneServer: alice and bob on one server.
func TestEncryptedRoomOneServer(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		encryptedConversation(t, s, s)
	})
}

// TestEncryptedRoomFederated: alice on one server, bob on another; keys
// are queried and claimed, and room keys sent, over federation.
func TestEncryptedRoomFederated(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		servers := testserver.NewFederated(t, 2)
		encryptedConversation(t, servers[0], servers[1])
	})
	if pg := os.Getenv(storagetest.PostgresEnv); pg != "" {
		t.Run("postgres", func(t *testing.T) {
			servers := testserver.NewFederated(t, 2, func(c *config.Config) { c.Database = storagetest.NewPostgresSchema(t, pg) })
			encryptedConversation(t, servers[0], servers[1])
		})
	}
}

// encryptedConversation: alice (on sa) makes an encrypted room and invites
// bob (on sb); she shares a Megolm session with bob's device over Olm and
// sends an encrypted message, which bob decrypts. Bob then logs in a
// second device; alice learns of it from device_lists.changed in /sync,
// shares the session with it, and the new device decrypts her next
// message (not the earlier one: it got the ratchet as it is now). The new
// device answers the same way, and alice decrypts that.
func encryptedConversation(t *testing.T, sa, sb *testserver.Server) {
	alice, bob := sa.Register("alice", password), sb.Register("bob", password)
	a1, b1 := newDevice(t, sa, alice), newDevice(t, sb, bob)

	roomID := sa.MustOK("POST", v3+"/createRoom", alice.AccessToken, map[string]any{
		"preset": "private_chat", "invite": []string{bob.UserID},
		"initial_state": []map[string]any{{"type": "m.room.encryption", "state_key": "", "content": map[string]string{"algorithm": algMegolm}}},
	}).Get("room_id").Str
	b1.syncUntil("the invite", func() bool { return b1.invites[roomID] })
	sb.MustOK("POST", v3+"/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(sa.ServerName()), bob.AccessToken, map[string]any{})
	a1.syncUntil("bob's join", func() bool { return a1.members[roomID][bob.UserID] == "join" })
	for _, c := range []struct {
		s *testserver.Server
		u *testserver.User
	}{{sa, alice}, {sb, bob}} {
		r := c.s.MustOK("GET", v3+"/rooms/"+url.PathEscape(roomID)+"/state/m.room.encryption/", c.u.AccessToken, nil)
		if r.Get("algorithm").Str != algMegolm {
			t.Fatalf("%s sees no Megolm encryption in the room: %s", c.u.UserID, r)
		}
	}

	// Alice tracks the room's members' devices and shares her session.
	a1.query(alice.UserID, bob.UserID)
	if got := a1.deviceIDs(bob.UserID); !slices.Equal(got, []string{bob.DeviceID}) {
		t.Fatalf("alice sees bob's devices %v, want [%s]", got, bob.DeviceID)
	}
	a1.shareRoomKey(roomID, devicesOf(a1, bob.UserID))
	first := "the owl flies at midnight"
	a1.sendEncrypted(roomID, first)
	b1.syncUntil("alice's first message", func() bool { return b1.decrypted(roomID, alice.UserID, first) })

	// Bob's second device.
	a1.sync(0)
	a1.changed = map[string]bool{}
	bob2 := sb.Login("bob", password)
	b2 := newDevice(t, sb, bob2)
	// As a client does: each time bob is in device_lists.changed, query
	// his devices again. An earlier change (his join reaching alice's
	// server) may still come first, so wait for the one with the device.
	want := sorted(bob.DeviceID, bob2.DeviceID)
	for deadline := time.Now().Add(30 * time.Second); ; {
		a1.syncUntil("bob in device_lists.changed", func() bool { return a1.changed[bob.UserID] })
		a1.changed = map[string]bool{}
		a1.query(bob.UserID)
		if got := a1.deviceIDs(bob.UserID); slices.Equal(got, want) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("after the changes alice sees bob's devices %v, want %v", got, want)
		}
	}
	a1.shareRoomKey(roomID, devicesOf(a1, bob.UserID))
	second := "the owl has a new perch"
	a1.sendEncrypted(roomID, second)
	b2.syncUntil("alice's second message on bob's new device", func() bool { return b2.decrypted(roomID, alice.UserID, second) })
	b1.syncUntil("alice's second message on bob's first device", func() bool { return b1.decrypted(roomID, alice.UserID, second) })
	if b2.decrypted(roomID, alice.UserID, first) {
		t.Fatal("bob's new device decrypted a message sent before it got the session")
	}

	// The new device answers: it claims alice's key and starts its own session.
	b2.query(alice.UserID, bob.UserID)
	b2.shareRoomKey(roomID, append(devicesOf(b2, alice.UserID), devicesOf(b2, bob.UserID)...))
	reply := "noted, from the new perch"
	b2.sendEncrypted(roomID, reply)
	a1.syncUntil("bob's reply", func() bool { return a1.decrypted(roomID, bob.UserID, reply) })
	b1.syncUntil("bob's reply on his first device", func() bool { return b1.decrypted(roomID, bob.UserID, reply) })
	for _, m := range a1.messages {
		if m.body == reply && m.senderDevice.deviceID != bob2.DeviceID {
			t.Fatalf("alice attributes bob's reply to device %s, want %s", m.senderDevice.deviceID, bob2.DeviceID)
		}
	}
}

func devicesOf(d *device, userID string) []deviceInfo {
	var out []deviceInfo
	for _, id := range d.deviceIDs(userID) {
		out = append(out, d.devices[userID][id])
	}
	return out
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}
