package roomserver

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/roomserver/testroom"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func TestFederationInputQueries(t *testing.T) {
	for _, version := range []string{"10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
				ctx := context.Background()
				rs := newRoomserver(t, db)
				remote := testroom.NewServer(t, "remote.test")
				carol, dave, mallory := remote.User("carol"), remote.User("dave"), remote.User("mallory")
				room := testroom.New(t, version, carol).Join(dave)
				for _, ev := range room.Events() {
					if _, err := rs.InputRemoteEvent(ctx, ev); err != nil {
						t.Fatal(err)
					}
				}
				create := room.Events()[0]
				joinRules := room.State().Get(spec.MRoomJoinRules, "")
				oldPL := room.State().Get(spec.MRoomPowerLevels, "")
				carolJoin := room.State().Get(spec.MRoomMember, carol.ID())
				// authIDs lists auth events as the room version wants them.
				authIDs := func(evs ...gomatrixserverlib.PDU) []string {
					var ids []string
					if version != "12" {
						ids = append(ids, create.EventID())
					}
					for _, ev := range evs {
						ids = append(ids, ev.EventID())
					}
					return ids
				}

				if x, err := rs.ForwardExtremities(ctx, room.ID()); err != nil || !slices.Equal(x, []string{room.Last().EventID()}) {
					t.Fatalf("ForwardExtremities = %v, %v", x, err)
				}
				if _, err := rs.ForwardExtremities(ctx, "!nope:remote.test"); !errors.Is(err, api.ErrRoomNotFound) {
					t.Fatalf("unknown room: %v", err)
				}

				// A rejected power levels event, stored as such.
				evil := room.Fork().Event(mallory, spec.MRoomPowerLevels, testroom.StateKey(""),
					map[string]any{"users": map[string]int{mallory.ID(): 100}}, testroom.Rejected())
				if res, err := rs.InputRemoteEvent(ctx, evil); err != nil || res.Status != api.InputRejected {
					t.Fatalf("evil: %+v %v", res, err)
				}
				stored, err := rs.StoredEvents(ctx, []string{create.EventID(), evil.EventID(), "$unknown", create.EventID()})
				if err != nil || len(stored) != 2 || stored[evil.EventID()] == nil || stored[create.EventID()] == nil {
					t.Fatalf("StoredEvents = %v, %v", stored, err)
				}

				// Power levels that replaced the first ones.
				room.SetPowerLevels(carol, room.PowerLevelsContent())
				if _, err := rs.InputRemoteEvent(ctx, room.Last()); err != nil {
					t.Fatal(err)
				}
				secondPL := room.Last()

				// Power levels on a branch we never saw.
				unseen := room.Fork()
				unseen.SetPowerLevels(carol, room.PowerLevelsContent())
				newPL := unseen.Last()

				for _, tc := range []struct {
					name    string
					event   gomatrixserverlib.PDU
					missing []string
					reason  string // in the *NotAllowedError, "" for none
				}{
					{name: "allowed", event: room.Fork().Event(carol, "m.room.message", nil, map[string]string{"body": "hi"})},
					{name: "unknown auth event", event: unseen.Fork().Event(carol, "m.room.message", nil, map[string]string{"body": "hi"}),
						missing: []string{newPL.EventID()}},
					{name: "rejected auth event", event: room.Fork().Event(carol, "m.room.message", nil, map[string]string{"body": "x"},
						testroom.WithAuthEvents(authIDs(evil, carolJoin)...)), reason: "was rejected"},
					{name: "auth event not selected", event: room.Fork().Event(carol, "m.room.message", nil, map[string]string{"body": "y"},
						testroom.WithAuthEvents(authIDs(oldPL, carolJoin, joinRules)...)), reason: "not one the auth rules select"},
					{name: "listed twice", event: room.Fork().Event(carol, "m.room.message", nil, map[string]string{"body": "z"},
						testroom.WithAuthEvents(authIDs(oldPL, carolJoin, secondPL)...)), reason: "twice"},
					{name: "refused by the rules", event: room.Fork().Event(mallory, "m.room.message", nil, map[string]string{"body": "let me in"},
						testroom.WithAuthEvents(authIDs(oldPL)...), testroom.Rejected()), reason: "not"},
				} {
					missing, err := rs.CheckAuthEvents(ctx, tc.event)
					var na *api.NotAllowedError
					switch {
					case tc.reason == "" && err != nil:
						t.Errorf("%s: %v", tc.name, err)
					case tc.reason != "" && (!errors.As(err, &na) || !strings.Contains(na.Reason, tc.reason)):
						t.Errorf("%s: err = %v, want one saying %q", tc.name, err, tc.reason)
					case !slices.Equal(missing, tc.missing):
						t.Errorf("%s: missing = %v, want %v", tc.name, missing, tc.missing)
					}
				}
			})
		})
	}
}
