package roomserver

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func TestServerMayRead(t *testing.T) {
	for _, tc := range []struct {
		visibility  string
		memberships []string
		joinedNow   bool
		want        bool
	}{
		{"world_readable", nil, false, true},
		{"joined", []string{"join"}, false, true},
		{"joined", []string{"leave", "join"}, false, true},
		{"joined", []string{"invite"}, true, false},
		{"joined", nil, true, false},
		{"invited", []string{"invite"}, false, true},
		{"invited", []string{"leave"}, true, false},
		{"shared", nil, true, true},
		{"shared", []string{"leave"}, false, false},
		{"shared", []string{"invite"}, false, false},
		{"", nil, true, true},
		{"", nil, false, false},
		{"something_new", nil, true, true},
	} {
		if got := fedServerMayRead(tc.visibility, tc.memberships, tc.joinedNow); got != tc.want {
			t.Errorf("fedServerMayRead(%q, %v, joinedNow=%v) = %v, want %v", tc.visibility, tc.memberships, tc.joinedNow, got, tc.want)
		}
	}
}

func TestServerACL(t *testing.T) {
	for _, tc := range []struct {
		name, content, server string
		want                  bool
	}{
		{"allow all", `{"allow":["*"]}`, "example.org", true},
		{"no allow list denies all", `{"deny":[]}`, "example.org", false},
		{"empty content denies all", `{}`, "example.org", false},
		{"not an object", `[]`, "example.org", false},
		{"deny wins over allow", `{"allow":["*"],"deny":["evil.com"]}`, "evil.com", false},
		{"port is ignored", `{"allow":["*"],"deny":["evil.com"]}`, "evil.com:8448", false},
		{"case-insensitive", `{"allow":["*"],"deny":["EVIL.com"]}`, "Evil.COM", false},
		{"subdomain glob", `{"allow":["*"],"deny":["*.evil.com"]}`, "a.b.evil.com", false},
		{"glob needs the dot", `{"allow":["*"],"deny":["*.evil.com"]}`, "evil.com", true},
		{"question mark", `{"allow":["?.example.org"]}`, "a.example.org", true},
		{"question mark is one character", `{"allow":["?.example.org"]}`, "ab.example.org", false},
		{"allow list only", `{"allow":["good.org"]}`, "other.org", false},
		{"IPv4 literal allowed by default", `{"allow":["*"]}`, "127.0.0.1:8448", true},
		{"IPv4 literal denied", `{"allow":["*"],"allow_ip_literals":false}`, "127.0.0.1:8448", false},
		{"IPv6 literal denied", `{"allow":["*"],"allow_ip_literals":false}`, "[::1]:8448", false},
		{"allow_ip_literals not a boolean counts as true", `{"allow":["*"],"allow_ip_literals":"no"}`, "10.0.0.1", true},
		{"names are not IP literals", `{"allow":["*"],"allow_ip_literals":false}`, "example.org", true},
		{"IP literal matched by deny", `{"allow":["*"],"deny":["127.0.0.1"]}`, "127.0.0.1:1234", false},
		{"non-string entries ignored", `{"allow":[1,null,{"a":1},"ok.org"]}`, "ok.org", true},
		{"allow not a list", `{"allow":"*"}`, "ok.org", false},
		{"star matches empty", `{"allow":["ok.org*"]}`, "ok.org", true},
		{"many stars", `{"allow":["*a*b*c*"]}`, "xxaxxbxxcxx", true},
		{"many stars, no match", `{"allow":["*a*b*c*d"]}`, "xxaxxbxxcxx", false},
		{"a star in the name is not a wildcard", `{"allow":["*"]}`, "*0000000", true},
		{"a star in the name matched by a star", `{"allow":["*"],"deny":["x*"]}`, "x*y", false},
	} {
		if got := aclAllows([]byte(tc.content), tc.server); got != tc.want {
			t.Errorf("%s: aclAllows(%s, %q) = %v, want %v", tc.name, tc.content, tc.server, got, tc.want)
		}
	}
}

func inputAll(t *testing.T, rs *Roomserver, events ...gomatrixserverlib.PDU) {
	t.Helper()
	for _, ev := range events {
		res, err := rs.InputRemoteEvent(context.Background(), ev)
		if err != nil || res.Status != api.InputAccepted {
			t.Fatalf("input %s %s: %+v %v", ev.Type(), ev.EventID(), res, err)
		}
	}
}

func eventIDs(evs []gomatrixserverlib.PDU) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID()
	}
	return out
}

func TestBackfillAndMissingEventsWalk(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rs := newRoomserver(t, db)
		remote := testroom.NewServer(t, "remote.test")
		carol, dave := remote.User("carol"), remote.User("dave")
		room := testroom.New(t, "10", carol).Join(dave)
		var msgs []gomatrixserverlib.PDU
		for _, body := range []string{"m1", "m2", "m3", "m4", "m5"} {
			msgs = append(msgs, room.Send(carol, body).Last())
		}
		inputAll(t, rs, room.Events()...)
		other := testroom.New(t, "10", carol)
		inputAll(t, rs, other.Events()...)

		got, err := rs.BackfillEvents(ctx, room.ID(), []string{msgs[4].EventID()}, 3)
		if err != nil {
			t.Fatal(err)
		}
		if want := eventIDs([]gomatrixserverlib.PDU{msgs[4], msgs[3], msgs[2]}); !slices.Equal(eventIDs(got), want) {
			t.Fatalf("backfill 3 from m5 = %v, want %v", eventIDs(got), want)
		}
		all, err := rs.BackfillEvents(ctx, room.ID(), []string{msgs[1].EventID(), "$unknown", other.Last().EventID()}, 100)
		if err != nil {
			t.Fatal(err)
		}
		events := room.Events()
		if len(all) != len(events)-3 || all[0].EventID() != msgs[1].EventID() || all[len(all)-1].Type() != spec.MRoomCreate {
			t.Fatalf("backfill from m2 to the start: %v", eventIDs(all))
		}
		for i := 1; i < len(all); i++ {
			if all[i].Depth() > all[i-1].Depth() {
				t.Fatalf("backfill not deepest first: %v", eventIDs(all))
			}
		}
		if _, err := rs.BackfillEvents(ctx, "!nope:remote.test", []string{msgs[0].EventID()}, 5); !errors.Is(err, api.ErrRoomNotFound) {
			t.Fatalf("unknown room: %v", err)
		}

		for _, tc := range []struct {
			name             string
			earliest, latest []string
			limit            int
			minDepth         int64
			want             []gomatrixserverlib.PDU
		}{
			{"the gap", []string{msgs[0].EventID()}, []string{msgs[4].EventID()}, 10, 0, msgs[1:4]},
			{"limited: nearest to latest", []string{msgs[0].EventID()}, []string{msgs[4].EventID()}, 2, 0, msgs[2:4]},
			{"min depth", nil, []string{msgs[4].EventID()}, 10, msgs[3].Depth(), msgs[3:4]},
			{"nothing missing", []string{msgs[3].EventID()}, []string{msgs[4].EventID()}, 10, 0, nil},
			{"unknown latest", nil, []string{"$unknown"}, 10, 0, nil},
			{"latest of another room", nil, []string{other.Last().EventID()}, 10, 0, nil},
		} {
			got, err := rs.MissingEventsBetween(ctx, room.ID(), tc.earliest, tc.latest, tc.limit, tc.minDepth)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !slices.Equal(eventIDs(got), eventIDs(tc.want)) {
				t.Errorf("%s: got %v, want %v", tc.name, eventIDs(got), eventIDs(tc.want))
			}
		}
	})
}

func TestServerVisibility(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rs := newRoomserver(t, db)
		remote, other := testroom.NewServer(t, "remote.test"), testroom.NewServer(t, "other.test:8448")
		carol, eve := remote.User("carol"), other.User("eve")
		const otherName, nobody = "other.test:8448", "nobody.test"

		room := testroom.New(t, "10", carol, testroom.HistoryVisibility("joined"))
		before := room.Send(carol, "before eve").Last()
		join := room.Join(eve).Last()
		during := room.Send(carol, "while eve is here").Last()
		leave := room.Leave(eve).Last()
		after := room.Send(carol, "after eve").Last()
		inputAll(t, rs, room.Events()...)

		check := func(server string, want map[gomatrixserverlib.PDU]bool) {
			t.Helper()
			var evs []gomatrixserverlib.PDU
			for ev := range want {
				evs = append(evs, ev)
			}
			got, err := rs.ServerCanSee(ctx, server, evs)
			if err != nil {
				t.Fatal(err)
			}
			for i, ev := range evs {
				if got[i] != want[ev] {
					t.Errorf("%s sees %s %s: %v, want %v", server, ev.Type(), ev.EventID(), got[i], want[ev])
				}
			}
		}
		check(otherName, map[gomatrixserverlib.PDU]bool{before: false, join: true, during: true, leave: true, after: false})
		check(nobody, map[gomatrixserverlib.PDU]bool{before: false, join: false, during: false, leave: false, after: false})

		for _, tc := range []struct {
			ev     gomatrixserverlib.PDU
			server string
			want   bool
		}{
			{before, otherName, false}, {join, otherName, true}, {during, otherName, true}, {after, otherName, false}, {during, nobody, false},
		} {
			if got, err := rs.ServerMayReadStateAt(ctx, room.ID(), tc.ev.EventID(), tc.server); err != nil || got != tc.want {
				t.Errorf("ServerMayReadStateAt(%s, %s) = %v, %v; want %v", tc.ev.EventID(), tc.server, got, err, tc.want)
			}
		}
		if _, err := rs.ServerMayReadStateAt(ctx, room.ID(), "$nope", otherName); !errors.Is(err, api.ErrEventNotFound) {
			t.Errorf("unknown event: %v", err)
		}
		if ok, _ := rs.ServerParticipates(ctx, room.ID(), otherName); ok {
			t.Error("other.test participates after eve left")
		}
		if servers, err := rs.ResidentServers(ctx, room.ID()); err != nil || !slices.Equal(servers, []string{"remote.test"}) {
			t.Errorf("resident servers %v %v", servers, err)
		}

		// Visibility becomes world_readable: its own event is visible to
		// anyone (the value after), and so is everything after it.
		hv := room.SetState(carol, spec.MRoomHistoryVisibility, "", map[string]string{"history_visibility": "world_readable"}).Last()
		open := room.Send(carol, "for everyone").Last()
		inputAll(t, rs, hv, open)
		check(nobody, map[gomatrixserverlib.PDU]bool{before: false, hv: true, open: true})
		if ok, _ := rs.ServerParticipates(ctx, room.ID(), nobody); !ok {
			t.Error("a world_readable room is open to every server")
		}
		if ok, _ := rs.ServerMayReadStateAt(ctx, room.ID(), open.EventID(), nobody); !ok {
			t.Error("state in a world_readable room is open to every server")
		}

		// Shared: a server sees history from before its user joined while
		// that user is joined.
		shared := testroom.New(t, "12", carol)
		early := shared.Send(carol, "early").Last()
		inputAll(t, rs, shared.Events()...)
		check(otherName, map[gomatrixserverlib.PDU]bool{early: false})
		inputAll(t, rs, shared.Join(eve).Last())
		check(otherName, map[gomatrixserverlib.PDU]bool{early: true})
		if ok, _ := rs.ServerParticipates(ctx, shared.ID(), otherName); !ok {
			t.Error("other.test participates while eve is joined")
		}
		if servers, _ := rs.ResidentServers(ctx, shared.ID()); !slices.Equal(servers, []string{"other.test:8448", "remote.test"}) {
			t.Errorf("resident servers %v", servers)
		}

		// Invited: seen from the invite on.
		invited := testroom.New(t, "12", carol, testroom.HistoryVisibility("invited"))
		pre := invited.Send(carol, "pre").Last()
		invite := invited.Invite(carol, eve).Last()
		post := invited.Send(carol, "post").Last()
		inputAll(t, rs, invited.Events()...)
		check(otherName, map[gomatrixserverlib.PDU]bool{pre: false, invite: true, post: true})

		// Events nobody may see: unknown and rejected ones.
		got, err := rs.ServerCanSee(ctx, otherName, []gomatrixserverlib.PDU{room.Fork().Event(carol, "m.room.message", nil, map[string]string{"body": "never stored"})})
		if err != nil || got[0] {
			t.Errorf("unknown event: %v %v", got, err)
		}

		// By timestamp: the first event other.test may see from the start
		// of the first room is eve's join.
		ev, err := rs.EventAtTimestampForServer(ctx, room.ID(), otherName, int64(before.OriginServerTS()), true)
		if err != nil || ev.EventID() != join.EventID() {
			t.Errorf("forward from the start: %v %v", ev, err)
		}
		ev, err = rs.EventAtTimestampForServer(ctx, room.ID(), otherName, int64(after.OriginServerTS()), false)
		if err != nil || ev.EventID() != leave.EventID() {
			t.Errorf("backward from the end: %v %v", ev, err)
		}
		if _, err := rs.EventAtTimestampForServer(ctx, room.ID(), otherName, time.Now().UnixMilli(), true); !errors.Is(err, api.ErrEventNotFound) {
			t.Errorf("nothing after now: %v", err)
		}
	})
}

func TestStateAndAuthChainForServers(t *testing.T) {
	for _, version := range []string{"1", "10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
				ctx := context.Background()
				rs := newRoomserver(t, db)
				remote := testroom.NewServer(t, "remote.test")
				carol, dave := remote.User("carol"), remote.User("dave")
				room := testroom.New(t, version, carol).Join(dave)
				room.SetState(carol, spec.MRoomName, "", map[string]string{"name": "Tea"})
				msg := room.Send(dave, "hi").Last()
				inputAll(t, rs, room.Events()...)

				stateEvents, chain, err := rs.StateBeforeEventWithAuthChain(ctx, room.ID(), msg.EventID())
				if err != nil {
					t.Fatal(err)
				}
				want := room.StateBefore(msg.EventID()).Events()
				if !sameIDs(eventIDs(stateEvents), eventIDs(want)) {
					t.Fatalf("state before the message: %v, want %v", eventIDs(stateEvents), eventIDs(want))
				}
				// Every state event's auth events are in the chain, and the
				// chain holds the create event in every version.
				inChain := map[string]bool{}
				for _, ev := range chain {
					inChain[ev.EventID()] = true
				}
				for _, ev := range append(stateEvents, chain...) {
					for _, a := range ev.AuthEventIDs() {
						if !inChain[a] {
							t.Errorf("auth event %s of %s is not in the chain", a, ev.EventID())
						}
					}
				}
				create := room.Events()[0]
				if !inChain[create.EventID()] {
					t.Error("the create event is not in the chain")
				}

				authOfMsg, err := rs.EventAuthChain(ctx, room.ID(), msg.EventID())
				if err != nil {
					t.Fatal(err)
				}
				ids := eventIDs(authOfMsg)
				for _, a := range msg.AuthEventIDs() {
					if !slices.Contains(ids, a) {
						t.Errorf("auth chain of the message lacks %s", a)
					}
				}
				if !slices.Contains(ids, create.EventID()) || slices.Contains(ids, msg.EventID()) {
					t.Errorf("auth chain of the message: %v", ids)
				}
				if chain, err := rs.EventAuthChain(ctx, room.ID(), create.EventID()); err != nil || len(chain) != 0 {
					t.Errorf("auth chain of the create event: %v %v", eventIDs(chain), err)
				}

				// Unknown events, and events asked for in the wrong room.
				if _, _, err := rs.StateBeforeEventWithAuthChain(ctx, room.ID(), "$nope"); !errors.Is(err, api.ErrEventNotFound) {
					t.Errorf("unknown event: %v", err)
				}
				other := testroom.New(t, version, carol)
				inputAll(t, rs, other.Events()...)
				if _, _, err := rs.StateBeforeEventWithAuthChain(ctx, room.ID(), other.Last().EventID()); !errors.Is(err, api.ErrEventNotFound) {
					t.Errorf("event of another room: %v", err)
				}
				if _, err := rs.EventAuthChain(ctx, room.ID(), other.Last().EventID()); !errors.Is(err, api.ErrEventNotFound) {
					t.Errorf("auth chain in another room: %v", err)
				}

				// An outlier has no state to give, but has an auth chain.
				later := room.SetState(carol, spec.MRoomTopic, "", map[string]string{"topic": "outlier"}).Last()
				if err := rs.InputOutliers(ctx, []gomatrixserverlib.PDU{later}); err != nil {
					t.Fatal(err)
				}
				if _, _, err := rs.StateBeforeEventWithAuthChain(ctx, room.ID(), later.EventID()); !errors.Is(err, api.ErrEventNotFound) {
					t.Errorf("state at an outlier: %v", err)
				}
				if _, err := rs.EventAuthChain(ctx, room.ID(), later.EventID()); err != nil {
					t.Errorf("auth chain of an outlier: %v", err)
				}
			})
		})
	}
}

func sameIDs(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestServerACLAllowsReadsCurrentState(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		rs := newRoomserver(t, db)
		remote := testroom.NewServer(t, "remote.test")
		carol := remote.User("carol")
		room := testroom.New(t, "12", carol)
		inputAll(t, rs, room.Events()...)
		if ok, err := rs.ServerACLAllows(ctx, room.ID(), "evil.test"); err != nil || !ok {
			t.Fatalf("no ACL: %v %v", ok, err)
		}
		inputAll(t, rs, room.SetState(carol, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"evil.test"}}).Last())
		if ok, _ := rs.ServerACLAllows(ctx, room.ID(), "evil.test:443"); ok {
			t.Fatal("denied server allowed")
		}
		if ok, _ := rs.ServerACLAllows(ctx, room.ID(), "good.test"); !ok {
			t.Fatal("allowed server denied")
		}
		if _, err := rs.ServerACLAllows(ctx, "!nope:remote.test", "good.test"); !errors.Is(err, api.ErrRoomNotFound) {
			t.Fatalf("unknown room: %v", err)
		}
	})
}
