package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// TestStrippedStateFromOtherServers covers the invite_room_state and
// knock_room_state rules that need no signatures: the old stripped form
// is taken in room versions before 12 and refused after, the create event
// is required from version 12, duplicates and junk are dropped.
func TestStrippedStateFromOtherServers(t *testing.T) {
	m := &Membership{log: logrus.NewEntry(logrus.New())}
	create := `{"type":"m.room.create","state_key":"","sender":"@a:x","content":{"room_version":"10"}}`
	name := `{"type":"m.room.name","state_key":"","sender":"@a:x","content":{"name":"Hi"}}`
	many := make([]string, 60)
	for i := range many {
		many[i] = fmt.Sprintf(`{"type":"t%d","state_key":"","sender":"@a:x","content":{}}`, i)
	}
	for _, tc := range []struct {
		name    string
		version gomatrixserverlib.RoomVersion
		entries []string
		want    int    // stripped events kept
		errcode string // or this error
	}{
		{"old form in v10", "10", []string{create, name}, 2, ""},
		{"no create before v12", "10", []string{name}, 1, ""},
		{"duplicates and junk dropped", "10", []string{name, name, `5`, `{"type":"x"}`, `{"type":"y","state_key":"","content":[]}`}, 1, ""},
		{"too many before v12: cut", "10", many, memMaxInviteRoomState, ""},
		{"old form in v12", "12", []string{create, name}, 0, "M_INVALID_PARAM"},
		{"nothing in v12", "12", nil, 0, "M_INVALID_PARAM"},
		{"too many in v12", "12", many, 0, "M_INVALID_PARAM"},
		{"unknown version", "99", []string{create}, 0, "M_INCOMPATIBLE_ROOM_VERSION"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := make([]json.RawMessage, len(tc.entries))
			for i, e := range tc.entries {
				raw[i] = json.RawMessage(e)
			}
			got, err := m.strippedState(context.Background(), "!r:x", tc.version, raw)
			if tc.errcode != "" {
				var he *httputil.Error
				if !errors.As(err, &he) || he.Code != tc.errcode {
					t.Fatalf("err = %v, want %s", err, tc.errcode)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d events (%v), want %d", len(got), err, tc.want)
			}
			for _, ev := range got {
				if len(ev) != 4 || ev["type"] == nil || ev["state_key"] == nil || ev["content"] == nil {
					t.Fatalf("not a stripped event: %v", ev)
				}
			}
		})
	}
}

// TestHandshakeErrorsForClients: which answers stop the search for a
// server to join through, and what the client is told.
func TestHandshakeErrorsForClients(t *testing.T) {
	forbidden := &memRemoteError{Server: "a", Status: http.StatusForbidden, Code: "M_FORBIDDEN", Message: "not invited"}
	cannotGrant := &memRemoteError{Server: "b", Status: http.StatusBadRequest, Code: "M_UNABLE_TO_GRANT_JOIN", Message: "ask another"}
	incompatible := &memRemoteError{Server: "c", Status: http.StatusBadRequest, Code: "M_INCOMPATIBLE_ROOM_VERSION", RoomVersion: "13"}
	unknown := &memRemoteError{Server: "d", Status: http.StatusNotFound, Code: "M_NOT_FOUND", Message: "no such room"}
	down := errors.New("e: connection refused")
	for _, tc := range []struct {
		name    string
		answers []error
		tried   int
		status  int
		errcode string
	}{
		{"first works", []error{nil, forbidden}, 1, 0, ""},
		{"down, then works", []error{down, nil}, 2, 0, ""},
		{"refusal stops", []error{forbidden, nil}, 1, 403, "M_FORBIDDEN"},
		{"cannot grant: ask the next", []error{cannotGrant, nil}, 2, 0, ""},
		{"cannot grant everywhere", []error{cannotGrant, cannotGrant}, 2, 400, "M_UNABLE_TO_GRANT_JOIN"},
		{"incompatible stops", []error{incompatible, nil}, 1, 400, "M_INCOMPATIBLE_ROOM_VERSION"},
		{"unknown everywhere", []error{down, unknown}, 2, 404, "M_NOT_FOUND"},
		{"all down", []error{unknown, down}, 2, 502, "M_UNKNOWN"},
		{"a refusal of ours passes", []error{&rsapi.NotAllowedError{Reason: "no"}}, 1, -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			servers := make([]spec.ServerName, len(tc.answers))
			for i := range servers {
				servers[i] = spec.ServerName(fmt.Sprint("s", i))
			}
			tried := 0
			err := memTryServers(servers, func(s spec.ServerName) error {
				tried++
				return tc.answers[strings.Index("s0s1s2", string(s))/2]
			})
			if tried != tc.tried {
				t.Fatalf("tried %d servers, want %d", tried, tc.tried)
			}
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			mapped := memClientError(err, "Cannot join")
			if tc.status == -1 {
				var na *rsapi.NotAllowedError
				if !errors.As(mapped, &na) {
					t.Fatalf("mapped %v", mapped)
				}
				return
			}
			var he *httputil.Error
			if !errors.As(mapped, &he) || he.Status != tc.status || he.Code != tc.errcode {
				t.Fatalf("mapped %v, want %d %s", mapped, tc.status, tc.errcode)
			}
			if tc.errcode == "M_INCOMPATIBLE_ROOM_VERSION" && he.Extra["room_version"] != "13" {
				t.Fatalf("room_version lost: %+v", he)
			}
		})
	}
}
