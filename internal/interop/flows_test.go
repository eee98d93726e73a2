package interop

import (
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// interopEnv is the two servers and one user on each, shared by the
// subtests. A flow takes its users as "owner", on whose server the room
// is created, and "guest", who comes from the other server, so each flow
// runs both ways.
type interopEnv struct {
	plexus, dendrite *homeserver
	pl               *testserver.Server // the in-process Plexus, for restarts
	dd               *dendrite
	alice, bob       *user
	timeout          time.Duration
	rooms            atomic.Int64
}

// step runs one step of a flow and logs how long it took.
func step(t *testing.T, name string, fn func()) {
	t.Helper()
	began := time.Now()
	fn()
	t.Logf("%-50s %s", name, time.Since(began).Round(time.Millisecond))
}

func who(u *user) string { return fmt.Sprintf("%s (%s)", u.userID, u.hs.label) }

// createRoom creates a room with the given preset; rooms on Plexus get
// dendriteRoomVersion unless extra names a version, since Plexus's
// default is newer than Dendrite v0.13.8 supports.
func (e *interopEnv) createRoom(t *testing.T, owner *user, preset string, extra map[string]any) string {
	t.Helper()
	body := map[string]any{"preset": preset, "name": fmt.Sprintf("interop %d on %s", e.rooms.Add(1), owner.hs.label)}
	if owner.hs == e.plexus {
		body["room_version"] = dendriteRoomVersion
	}
	for k, v := range extra {
		body[k] = v
	}
	roomID := owner.mustOK(t, "POST", "/_matrix/client/v3/createRoom", body).get("room_id").String()
	version := "default"
	if v, ok := body["room_version"]; ok {
		version = fmt.Sprint(v)
	}
	t.Logf("room %s (%s, version %s)", roomID, preset, version)
	return roomID
}

// joinAndChat: owner creates a public room, guest joins it through
// owner's server, each sees the join, and a message crosses each way.
// It returns the room and the two messages' event IDs.
func (e *interopEnv) joinAndChat(t *testing.T, owner, guest *user, extra map[string]any) (roomID, ownerMsg, guestMsg string) {
	t.Helper()
	step(t, who(owner)+" creates a public room", func() {
		roomID = e.createRoom(t, owner, "public_chat", extra)
	})
	step(t, who(guest)+" joins via "+owner.hs.label, func() {
		if r := guest.join(t, roomID, owner.hs.serverName); r.status != http.StatusOK {
			t.Fatalf("%s's join of %s via %s: %s%s%s", guest.userID, roomID, owner.hs.serverName, r, guest.hs.logTail(), owner.hs.logTail())
		}
	})
	step(t, "the guest sees its join in /sync", func() {
		guest.waitEvent(t, roomID, "its own join", e.timeout, isMembership(guest.userID, "join"), owner.hs)
	})
	step(t, "the owner sees the guest's join in /sync", func() {
		owner.waitEvent(t, roomID, "the guest's join", e.timeout, isMembership(guest.userID, "join"), guest.hs)
	})
	step(t, "the owner's message reaches the guest", func() {
		text := "hello from " + owner.hs.label
		ownerMsg = owner.send(t, roomID, text)
		guest.waitEvent(t, roomID, "the owner's message", e.timeout, isMessage(owner.userID, text), owner.hs)
	})
	step(t, "the guest's message reaches the owner", func() {
		text := "hello from " + guest.hs.label
		guestMsg = guest.send(t, roomID, text)
		owner.waitEvent(t, roomID, "the guest's message", e.timeout, isMessage(guest.userID, text), guest.hs)
	})
	return roomID, ownerMsg, guestMsg
}

// defaultVersionRefused: a room in Plexus's default version (12), which
// Dendrite v0.13.8 does not support, cannot be joined from Dendrite, and
// the join fails rather than hangs.
func (e *interopEnv) defaultVersionRefused(t *testing.T) {
	alice, bob := e.alice, e.bob
	var roomID string
	step(t, "alice creates a room in plexus's default version", func() {
		roomID = alice.mustOK(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).get("room_id").String()
	})
	version := alice.mustOK(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.create/", nil).get("room_version").String()
	t.Logf("room %s, version %s", roomID, version)
	step(t, "bob's join is refused", func() {
		r := bob.join(t, roomID, e.plexus.serverName)
		t.Logf("bob's join: %s", r)
		if r.status == http.StatusOK {
			t.Fatalf("bob joined a version %s room through Dendrite v0.13.8, which does not support it", version)
		}
	})
}

// inviteJoinLeave: owner invites guest to a private room; guest sees the
// invite, joins (no server named: the invite tells where), talks, and
// leaves; each side sees the other's membership changes.
func (e *interopEnv) inviteJoinLeave(t *testing.T, owner, guest *user) {
	var roomID string
	step(t, who(owner)+" creates a private room and invites", func() {
		roomID = e.createRoom(t, owner, "private_chat", nil)
		owner.invite(t, roomID, guest.userID)
	})
	step(t, "the guest sees the invite in /sync", func() {
		guest.waitSync(t, "the invite to "+roomID, e.timeout, func(b gjson.Result) bool { return hasInvite(b, roomID, guest.userID) }, owner.hs)
	})
	step(t, "the guest accepts", func() {
		r := guest.hs.do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID), guest.token, map[string]any{})
		if r.status != http.StatusOK {
			t.Fatalf("%s's join of %s after the invite: %s%s%s", guest.userID, roomID, r, guest.hs.logTail(), owner.hs.logTail())
		}
		guest.waitEvent(t, roomID, "its own join", e.timeout, isMembership(guest.userID, "join"), owner.hs)
	})
	step(t, "the owner sees the guest's join", func() {
		owner.waitEvent(t, roomID, "the guest's join", e.timeout, isMembership(guest.userID, "join"), guest.hs)
	})
	step(t, "the guest's message reaches the owner", func() {
		guest.send(t, roomID, "thanks for the invite")
		owner.waitEvent(t, roomID, "the guest's message", e.timeout, isMessage(guest.userID, "thanks for the invite"), guest.hs)
	})
	step(t, "the guest leaves; the owner sees it", func() {
		guest.leave(t, roomID)
		owner.waitEvent(t, roomID, "the guest's leave", e.timeout, isMembership(guest.userID, "leave"), guest.hs)
	})
	step(t, "the guest sees the room among its left rooms", func() {
		guest.waitSync(t, "room "+roomID+" under rooms.leave", e.timeout, func(b gjson.Result) bool {
			return roomSection(b, "leave", roomID).Exists()
		}, owner.hs)
	})
}

// inviteReject: guest rejects owner's invite; its server must reach
// owner's (make_leave, send_leave), and owner sees the leave.
func (e *interopEnv) inviteReject(t *testing.T, owner, guest *user) {
	var roomID string
	step(t, who(owner)+" creates a private room and invites", func() {
		roomID = e.createRoom(t, owner, "private_chat", nil)
		owner.invite(t, roomID, guest.userID)
	})
	step(t, "the guest sees the invite in /sync", func() {
		guest.waitSync(t, "the invite to "+roomID, e.timeout, func(b gjson.Result) bool { return hasInvite(b, roomID, guest.userID) }, owner.hs)
	})
	step(t, "the guest rejects it", func() {
		r := guest.hs.do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", guest.token, map[string]any{})
		if r.status != http.StatusOK {
			t.Fatalf("%s's rejection of the invite to %s: %s%s%s", guest.userID, roomID, r, guest.hs.logTail(), owner.hs.logTail())
		}
	})
	step(t, "the owner sees the rejection", func() {
		owner.waitEvent(t, roomID, "the guest's leave", e.timeout, isMembership(guest.userID, "leave"), guest.hs)
	})
	step(t, "the guest sees the room among its left rooms", func() {
		guest.waitSync(t, "room "+roomID+" under rooms.leave", e.timeout, func(b gjson.Result) bool {
			return roomSection(b, "leave", roomID).Exists()
		}, owner.hs)
	})
}

// joinByAlias: owner publishes an alias; guest joins by it, so its
// server resolves the alias on owner's (GET /query/directory).
func (e *interopEnv) joinByAlias(t *testing.T, owner, guest *user) {
	var roomID, alias string
	step(t, who(owner)+" creates a public room with an alias", func() {
		roomID = e.createRoom(t, owner, "public_chat", nil)
		alias = fmt.Sprintf("#interop-%d:%s", e.rooms.Add(1), owner.hs.serverName)
		owner.setAlias(t, alias, roomID)
	})
	step(t, "the guest resolves the alias", func() {
		r := guest.hs.do(t, "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), guest.token, nil)
		if r.status != http.StatusOK || r.get("room_id").String() != roomID {
			e.gap(t, e.notYet(guest, r), "other servers' aliases are not resolved over federation (clientapi/directory.go)", "%s resolving %s: %s, want room %s", guest.hs.label, alias, r, roomID)
		}
	})
	step(t, "the guest joins "+alias, func() {
		r := guest.hs.do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(alias), guest.token, map[string]any{})
		if r.status != http.StatusOK || r.get("room_id").String() != roomID {
			t.Fatalf("%s's join of %s: %s, want room %s%s%s", guest.userID, alias, r, roomID, guest.hs.logTail(), owner.hs.logTail())
		}
	})
	step(t, "the owner sees the guest's join", func() {
		owner.waitEvent(t, roomID, "the guest's join", e.timeout, isMembership(guest.userID, "join"), guest.hs)
	})
}

// typingAndReceipts: in a shared room, typing notifications and read
// receipts cross each way (m.typing and m.receipt EDUs).
func (e *interopEnv) typingAndReceipts(t *testing.T, owner, guest *user) {
	roomID, ownerMsg, guestMsg := e.joinAndChat(t, owner, guest, nil)
	step(t, "the owner's typing reaches the guest", func() {
		owner.typing(t, roomID, true)
		guest.waitSync(t, "the owner typing", e.timeout, func(b gjson.Result) bool { return hasEphemeral(b, roomID, isTyping(owner.userID)) }, owner.hs)
	})
	step(t, "the guest's typing reaches the owner", func() {
		guest.typing(t, roomID, true)
		owner.waitSync(t, "the guest typing", e.timeout, func(b gjson.Result) bool { return hasEphemeral(b, roomID, isTyping(guest.userID)) }, guest.hs)
	})
	step(t, "the guest's receipt reaches the owner", func() {
		guest.receipt(t, roomID, ownerMsg)
		owner.waitSync(t, "the guest's receipt for "+ownerMsg, e.timeout, func(b gjson.Result) bool {
			return hasEphemeral(b, roomID, isReceipt(ownerMsg, guest.userID))
		}, guest.hs)
	})
	step(t, "the owner's receipt reaches the guest", func() {
		owner.receipt(t, roomID, guestMsg)
		guest.waitSync(t, "the owner's receipt for "+guestMsg, e.timeout, func(b gjson.Result) bool {
			return hasEphemeral(b, roomID, isReceipt(guestMsg, owner.userID))
		}, owner.hs)
	})
}

// history: messages sent before the guest joined reach it through
// /messages, which its server fills from owner's (GET /backfill).
func (e *interopEnv) history(t *testing.T, owner, guest *user) {
	const n = 5
	var roomID, prevBatch string
	step(t, who(owner)+" creates a public room and talks alone", func() {
		roomID = e.createRoom(t, owner, "public_chat", nil)
		for i := 1; i <= n; i++ {
			owner.send(t, roomID, fmt.Sprintf("history %d", i))
		}
	})
	step(t, "the guest joins", func() {
		if r := guest.join(t, roomID, owner.hs.serverName); r.status != http.StatusOK {
			t.Fatalf("%s's join of %s: %s%s%s", guest.userID, roomID, r, guest.hs.logTail(), owner.hs.logTail())
		}
		body := guest.waitSync(t, "its own join in "+roomID, e.timeout, func(b gjson.Result) bool {
			for _, ev := range joinedRoom(b, roomID).Get("timeline.events").Array() {
				if isMembership(guest.userID, "join")(ev) {
					return true
				}
			}
			return false
		}, owner.hs)
		prevBatch = joinedRoom(body, roomID).Get("timeline.prev_batch").String()
		// What the join's timeline already holds counts too.
		for _, ev := range joinedRoom(body, roomID).Get("timeline.events").Array() {
			if ev.Get("type").String() == "m.room.message" {
				t.Logf("in the join's timeline: %s", ev.Get("content.body"))
			}
		}
	})
	step(t, "the guest pages back through the owner's messages", func() {
		deadline := time.Now().Add(e.timeout)
		var last *response
		for {
			seen := map[string]bool{}
			from := prevBatch
			for page := 0; page < 10; page++ {
				last = guest.messages(t, roomID, from, 20)
				for _, ev := range last.get("chunk").Array() {
					if ev.Get("type").String() == "m.room.message" && ev.Get("sender").String() == owner.userID {
						seen[ev.Get("content.body").String()] = true
					}
				}
				end := last.get("end").String()
				if end == "" || end == from || len(last.get("chunk").Array()) == 0 {
					break
				}
				from = end
			}
			missing := 0
			for i := 1; i <= n; i++ {
				if !seen[fmt.Sprintf("history %d", i)] {
					missing++
				}
			}
			if missing == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's /messages in %s lacks %d of the %d earlier messages after %s; last page: %s%s%s",
					guest.userID, roomID, missing, n, e.timeout, truncate(last.String(), 6000), guest.hs.logTail(), owner.hs.logTail())
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// restarts: each server goes down while the other has an event for it,
// and comes back on the same name and data; the queued events arrive
// (the sender's retries) and the room goes on working both ways.
func (e *interopEnv) restarts(t *testing.T) {
	alice, bob := e.alice, e.bob
	roomID, _, _ := e.joinAndChat(t, bob, alice, nil)
	step(t, "dendrite stops; alice sends meanwhile", func() {
		e.dd.stop()
		alice.send(t, roomID, "sent while dendrite was down")
		time.Sleep(2 * time.Second) // plexus tries, fails and backs off
	})
	step(t, "dendrite starts again", func() { e.dd.start(t) })
	step(t, "bob receives what alice sent while dendrite was down", func() {
		bob.waitEvent(t, roomID, "alice's message sent while dendrite was down", e.timeout,
			isMessage(alice.userID, "sent while dendrite was down"), e.plexus)
	})
	step(t, "after dendrite's restart bob's message reaches alice", func() {
		bob.send(t, roomID, "dendrite is back")
		alice.waitEvent(t, roomID, "bob's message after dendrite's restart", e.timeout, isMessage(bob.userID, "dendrite is back"), e.dendrite)
	})
	step(t, "plexus stops; bob sends meanwhile", func() {
		e.pl.Stop()
		bob.send(t, roomID, "sent while plexus was down")
		time.Sleep(2 * time.Second) // dendrite tries, fails and backs off
	})
	step(t, "plexus starts again", func() {
		e.pl.Restart()
		e.plexus.clientURL = e.pl.URL
	})
	step(t, "after plexus's restart alice's message reaches bob", func() {
		alice.send(t, roomID, "plexus is back")
		bob.waitEvent(t, roomID, "alice's message after plexus's restart", e.timeout, isMessage(alice.userID, "plexus is back"), e.plexus)
	})
	step(t, "alice receives what bob sent while plexus was down", func() {
		alice.waitEvent(t, roomID, "bob's message sent while plexus was down", 2*e.timeout,
			isMessage(bob.userID, "sent while plexus was down"), e.dendrite)
	})
}
