package federationapi_test

import (
	"encoding/json"
	"io"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// readsFixture is server a with rooms that server b asks about.
type readsFixture struct {
	t       *testing.T
	a, b    *testserver.Server
	alice   *testserver.User
	open    string   // world_readable: b may read it
	closed  string   // joined: b has nobody in it
	denied  string   // world_readable, but its ACL denies 127.0.0.1
	msgs    []string // messages in open, oldest first
	closedM string   // a message in closed
}

func newReadsFixture(t *testing.T) *readsFixture {
	servers := testserver.NewFederated(t, 2)
	f := &readsFixture{t: t, a: servers[0], b: servers[1]}
	f.alice = f.a.Register("alice", "pw")
	f.open = f.createRoom("world_readable")
	for i := 0; i < 5; i++ {
		f.msgs = append(f.msgs, f.send(f.open, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "m" + strconv.Itoa(i)}))
	}
	f.closed = f.createRoom("joined")
	f.closedM = f.send(f.closed, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "secret"})
	f.denied = f.createRoom("world_readable")
	empty := ""
	f.send(f.denied, "m.room.server_acl", &empty, map[string]any{"allow": []string{"*"}, "deny": []string{"127.0.0.1"}})
	return f
}

func (f *readsFixture) createRoom(visibility string) string {
	f.t.Helper()
	roomID, err := f.a.Server.Roomserver.CreateRoom(ctx(f.t), rsapi.CreateRoomRequest{
		Version: "12", Creator: f.alice.UserID,
		InitialState: []rsapi.StateEvent{
			{Type: "m.room.member", StateKey: f.alice.UserID, Content: map[string]any{"membership": "join"}},
			{Type: "m.room.power_levels", Content: map[string]any{"users": map[string]int{}, "events_default": 0, "state_default": 50}},
			{Type: "m.room.join_rules", Content: map[string]any{"join_rule": "public"}},
			{Type: "m.room.history_visibility", Content: map[string]any{"history_visibility": visibility}},
		},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return roomID
}

func (f *readsFixture) send(roomID, evType string, stateKey *string, content any) string {
	f.t.Helper()
	raw, _ := json.Marshal(content)
	ev, err := f.a.Server.Roomserver.SendEvent(ctx(f.t), rsapi.NewEvent{RoomID: roomID, Sender: f.alice.UserID, Type: evType, StateKey: stateKey, Content: raw})
	if err != nil {
		f.t.Fatal(err)
	}
	return ev.EventID()
}

// ask sends a request signed by b to a.
func (f *readsFixture) ask(method, path string, content any) (int, gjson.Result) {
	f.t.Helper()
	resp, err := f.b.Server.Federation.DoSigned(ctx(f.t), method, spec.ServerName(f.a.ServerName()), path, content)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, gjson.ParseBytes(data)
}

func (f *readsFixture) ok(method, path string, content any) gjson.Result {
	f.t.Helper()
	status, body := f.ask(method, path, content)
	if status != 200 {
		f.t.Fatalf("%s %s: %d %s", method, path, status, body.Raw)
	}
	return body
}

func (f *readsFixture) fails(status int, errcode, method, path string, content any) {
	f.t.Helper()
	got, body := f.ask(method, path, content)
	if got != status || body.Get("errcode").String() != errcode {
		f.t.Errorf("%s %s: %d %s, want %d %s", method, path, got, body.Raw, status, errcode)
	}
}

// ids parses PDUs of a room version 12 room and returns their event IDs.
func ids(t *testing.T, pdus gjson.Result) []string {
	t.Helper()
	verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersionV12)
	var out []string
	for _, p := range pdus.Array() {
		ev, err := verImpl.NewEventFromUntrustedJSON([]byte(p.Raw))
		if err != nil {
			t.Fatalf("bad PDU %s: %v", p.Raw, err)
		}
		out = append(out, ev.EventID())
	}
	return out
}

func esc(s string) string { return url.PathEscape(s) }

func TestReadEventsAndState(t *testing.T) {
	f := newReadsFixture(t)
	const v1 = "/_matrix/federation/v1"
	m := f.msgs

	// /backfill: the given event and those before it, deepest first.
	r := f.ok("GET", v1+"/backfill/"+esc(f.open)+"?limit=3&v="+url.QueryEscape(m[4]), nil)
	if got := ids(t, r.Get("pdus")); !slices.Equal(got, []string{m[4], m[3], m[2]}) || r.Get("origin").String() != f.a.ServerName() || r.Get("origin_server_ts").Int() == 0 {
		t.Fatalf("backfill: %v %s", got, r.Raw)
	}
	if all := f.ok("GET", v1+"/backfill/"+esc(f.open)+"?v="+url.QueryEscape(m[0]), nil).Get("pdus"); all.Get("#").Int() != 6 || all.Get("5.type").String() != "m.room.create" {
		t.Fatalf("backfill to the start: %s", all.Raw)
	}
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/backfill/"+esc(f.closed)+"?v="+url.QueryEscape(f.closedM), nil)
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/backfill/"+esc(f.denied)+"?v="+url.QueryEscape(m[0]), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/backfill/"+esc("!nope:"+f.a.ServerName())+"?v="+url.QueryEscape(m[0]), nil)
	f.fails(400, "M_MISSING_PARAM", "GET", v1+"/backfill/"+esc(f.open), nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/backfill/"+esc(f.open)+"?limit=x&v="+url.QueryEscape(m[0]), nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/backfill/"+esc(f.open)+"?v=nope", nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/backfill/nope?v="+url.QueryEscape(m[0]), nil)

	// /get_missing_events: the gap between earliest and latest, oldest first.
	gme := v1 + "/get_missing_events/" + esc(f.open)
	r = f.ok("POST", gme, map[string]any{"earliest_events": []string{m[0]}, "latest_events": []string{m[4]}, "limit": 10})
	if got := ids(t, r.Get("events")); !slices.Equal(got, m[1:4]) {
		t.Fatalf("get_missing_events: %v, want %v", got, m[1:4])
	}
	r = f.ok("POST", gme, map[string]any{"earliest_events": []string{}, "latest_events": []string{m[4]}, "limit": 2})
	if got := ids(t, r.Get("events")); !slices.Equal(got, m[2:4]) {
		t.Fatalf("get_missing_events, limit 2: %v", got)
	}
	f.fails(403, "M_FORBIDDEN", "POST", v1+"/get_missing_events/"+esc(f.closed), map[string]any{"earliest_events": []string{}, "latest_events": []string{f.closedM}})
	f.fails(403, "M_FORBIDDEN", "POST", v1+"/get_missing_events/"+esc(f.denied), map[string]any{"earliest_events": []string{}, "latest_events": []string{m[0]}})
	f.fails(404, "M_NOT_FOUND", "POST", v1+"/get_missing_events/"+esc("!nope:x"), map[string]any{"earliest_events": []string{}, "latest_events": []string{m[0]}})
	f.fails(400, "M_BAD_JSON", "POST", gme, map[string]any{"earliest_events": []string{}})
	f.fails(400, "M_BAD_JSON", "POST", gme, map[string]any{"latest_events": "x"})
	f.fails(400, "M_NOT_JSON", "POST", gme, nil)
	f.fails(400, "M_INVALID_PARAM", "POST", gme, map[string]any{"latest_events": []string{m[4]}, "limit": -1})

	// /state and /state_ids before the third message.
	st := f.ok("GET", v1+"/state/"+esc(f.open)+"?event_id="+url.QueryEscape(m[2]), nil)
	stateIDs := ids(t, st.Get("pdus"))
	if len(stateIDs) != 5 || !st.Get("pdus.#(type==m.room.create)").Exists() || st.Get("auth_chain.#").Int() == 0 {
		t.Fatalf("state: %s", st.Raw)
	}
	si := f.ok("GET", v1+"/state_ids/"+esc(f.open)+"?event_id="+url.QueryEscape(m[2]), nil)
	var pduIDs []string
	for _, id := range si.Get("pdu_ids").Array() {
		pduIDs = append(pduIDs, id.String())
	}
	slices.Sort(pduIDs)
	slices.Sort(stateIDs)
	if !slices.Equal(pduIDs, stateIDs) || si.Get("auth_chain_ids.#").Int() != st.Get("auth_chain.#").Int() {
		t.Fatalf("state_ids %s, state %v", si.Raw, stateIDs)
	}
	for _, p := range []string{"/state/", "/state_ids/"} {
		f.fails(403, "M_FORBIDDEN", "GET", v1+p+esc(f.closed)+"?event_id="+url.QueryEscape(f.closedM), nil)
		f.fails(403, "M_FORBIDDEN", "GET", v1+p+esc(f.denied)+"?event_id="+url.QueryEscape(m[0]), nil)
		f.fails(404, "M_NOT_FOUND", "GET", v1+p+esc(f.open)+"?event_id="+url.QueryEscape("$nope"), nil)
		f.fails(404, "M_NOT_FOUND", "GET", v1+p+esc(f.open)+"?event_id="+url.QueryEscape(f.closedM), nil)
		f.fails(404, "M_NOT_FOUND", "GET", v1+p+esc("!nope:x")+"?event_id="+url.QueryEscape(m[0]), nil)
		f.fails(400, "M_MISSING_PARAM", "GET", v1+p+esc(f.open), nil)
	}

	// /event: one event.
	ev := f.ok("GET", v1+"/event/"+esc(m[3]), nil)
	if got := ids(t, ev.Get("pdus")); !slices.Equal(got, []string{m[3]}) || ev.Get("origin").String() != f.a.ServerName() {
		t.Fatalf("event: %s", ev.Raw)
	}
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/event/"+esc(f.closedM), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/event/"+esc("$nope"), nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/event/nope", nil)

	// /event_auth: the auth chain, with the create event.
	auth := f.ok("GET", v1+"/event_auth/"+esc(f.open)+"/"+esc(m[3]), nil)
	if !auth.Get("auth_chain.#(type==m.room.create)").Exists() || !auth.Get("auth_chain.#(type==m.room.power_levels)").Exists() {
		t.Fatalf("event_auth: %s", auth.Raw)
	}
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/event_auth/"+esc(f.closed)+"/"+esc(f.closedM), nil)
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/event_auth/"+esc(f.denied)+"/"+esc(m[0]), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/event_auth/"+esc(f.open)+"/"+esc(f.closedM), nil)

	// /timestamp_to_event.
	tte := v1 + "/timestamp_to_event/" + esc(f.open)
	r = f.ok("GET", tte+"?dir=b&ts="+strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10), nil)
	if r.Get("event_id").String() != m[4] || r.Get("origin_server_ts").Int() == 0 {
		t.Fatalf("timestamp_to_event backwards from the future: %s", r.Raw)
	}
	r = f.ok("GET", tte+"?dir=f&ts=0", nil)
	if r.Get("event_id").String() == "" {
		t.Fatalf("timestamp_to_event from the start: %s", r.Raw)
	}
	f.fails(404, "M_NOT_FOUND", "GET", tte+"?dir=f&ts="+strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/timestamp_to_event/"+esc(f.closed)+"?dir=f&ts=0", nil)
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/timestamp_to_event/"+esc(f.denied)+"?dir=f&ts=0", nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/timestamp_to_event/"+esc("!nope:x")+"?dir=f&ts=0", nil)
	f.fails(400, "M_MISSING_PARAM", "GET", tte+"?dir=f", nil)
	f.fails(400, "M_INVALID_PARAM", "GET", tte+"?dir=f&ts=soon", nil)
	f.fails(400, "M_MISSING_PARAM", "GET", tte+"?ts=0", nil)
	f.fails(400, "M_INVALID_PARAM", "GET", tte+"?dir=x&ts=0", nil)

	// Every endpoint needs a signature.
	f.a.ExpectError(401, "M_UNAUTHORIZED", "GET", v1+"/event/"+esc(m[3]), "", nil)
	f.a.ExpectError(401, "M_UNAUTHORIZED", "GET", v1+"/backfill/"+esc(f.open)+"?v="+url.QueryEscape(m[0]), "", nil)
}

func TestReadQueries(t *testing.T) {
	f := newReadsFixture(t)
	const v1 = "/_matrix/federation/v1"
	a := f.a
	a.MustOK("PUT", "/_matrix/client/v3/profile/"+esc(f.alice.UserID)+"/displayname", f.alice.AccessToken, map[string]string{"displayname": "Alice"})

	// Profiles of our users only.
	if r := f.ok("GET", v1+"/query/profile?user_id="+url.QueryEscape(f.alice.UserID), nil); r.Get("displayname").String() != "Alice" || r.Get("avatar_url").Exists() {
		t.Fatalf("profile: %s", r.Raw)
	}
	if r := f.ok("GET", v1+"/query/profile?field=avatar_url&user_id="+url.QueryEscape(f.alice.UserID), nil); r.Raw != "{}" {
		t.Fatalf("unset field: %s", r.Raw)
	}
	if r := f.ok("GET", v1+"/query/profile?field=displayname&user_id="+url.QueryEscape(f.alice.UserID), nil); r.Get("displayname").String() != "Alice" {
		t.Fatalf("one field: %s", r.Raw)
	}
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/query/profile?user_id="+url.QueryEscape("@nobody:"+a.ServerName()), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/query/profile?user_id="+url.QueryEscape("@alice:elsewhere.example"), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/query/profile?field=x.y&user_id="+url.QueryEscape(f.alice.UserID), nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/query/profile?user_id=alice", nil)
	f.fails(400, "M_MISSING_PARAM", "GET", v1+"/query/profile", nil)

	// Aliases of ours.
	alias := "#tea:" + a.ServerName()
	if err := a.Server.Roomserver.SetAlias(ctx(t), alias, f.open, f.alice.UserID); err != nil {
		t.Fatal(err)
	}
	if r := f.ok("GET", v1+"/query/directory?room_alias="+url.QueryEscape(alias), nil); r.Get("room_id").String() != f.open || r.Get("servers").Raw != `["`+a.ServerName()+`"]` {
		t.Fatalf("directory: %s", r.Raw)
	}
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/query/directory?room_alias="+url.QueryEscape("#nope:"+a.ServerName()), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/query/directory?room_alias="+url.QueryEscape("#tea:elsewhere.example"), nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/query/directory?room_alias=tea", nil)
	f.fails(400, "M_MISSING_PARAM", "GET", v1+"/query/directory", nil)

	// The published room directory, paged.
	for _, room := range []string{f.open, f.closed} {
		if err := a.Server.Roomserver.SetPublished(ctx(t), room, true); err != nil {
			t.Fatal(err)
		}
	}
	page := f.ok("GET", v1+"/publicRooms?limit=1", nil)
	next := page.Get("next_batch").String()
	if page.Get("chunk.#").Int() != 1 || next == "" || page.Get("total_room_count_estimate").Int() != 2 || page.Get("prev_batch").Exists() {
		t.Fatalf("first page: %s", page.Raw)
	}
	page2 := f.ok("GET", v1+"/publicRooms?limit=1&since="+url.QueryEscape(next), nil)
	if page2.Get("chunk.#").Int() != 1 || page2.Get("chunk.0.room_id").String() == page.Get("chunk.0.room_id").String() || page2.Get("next_batch").Exists() || !page2.Get("prev_batch").Exists() {
		t.Fatalf("second page: %s", page2.Raw)
	}
	all := f.ok("POST", v1+"/publicRooms", map[string]any{"limit": 10})
	if open := all.Get("chunk.#(room_id==" + f.open + ")"); !open.Exists() || !open.Get("world_readable").Bool() || open.Get("num_joined_members").Int() != 1 || open.Get("join_rule").String() != "public" {
		t.Fatalf("POST publicRooms: %s", all.Raw)
	}
	if none := f.ok("POST", v1+"/publicRooms", map[string]any{"filter": map[string]any{"generic_search_term": "no such room"}}); none.Get("chunk.#").Int() != 0 {
		t.Fatalf("search: %s", none.Raw)
	}
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/publicRooms?since=garbage!", nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/publicRooms?limit=x", nil)
	f.fails(400, "M_BAD_JSON", "POST", v1+"/publicRooms", map[string]any{"limit": "x"})

	// Devices of our users: those with keys (keys_test.go has more).
	d := f.ok("GET", v1+"/user/devices/"+esc(f.alice.UserID), nil)
	if d.Get("user_id").String() != f.alice.UserID || !d.Get("stream_id").Exists() || d.Get("devices").Raw != "[]" {
		t.Fatalf("devices: %s", d.Raw)
	}
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/user/devices/"+esc("@nobody:"+a.ServerName()), nil)
	f.fails(404, "M_NOT_FOUND", "GET", v1+"/user/devices/"+esc("@alice:elsewhere.example"), nil)
	f.fails(400, "M_INVALID_PARAM", "GET", v1+"/user/devices/alice", nil)

	// Keys: alice has none yet.
	if r := f.ok("POST", v1+"/user/keys/query", map[string]any{"device_keys": map[string]any{f.alice.UserID: []string{}}}); r.Get("device_keys."+gjson.Escape(f.alice.UserID)).Raw != "{}" {
		t.Fatalf("keys/query: %s", r.Raw)
	}
	if r := f.ok("POST", v1+"/user/keys/claim", map[string]any{"one_time_keys": map[string]any{f.alice.UserID: map[string]string{"DEV": "signed_curve25519"}}}); r.Get("one_time_keys").Raw != "{}" {
		t.Fatalf("keys/claim: %s", r.Raw)
	}
	f.fails(400, "M_BAD_JSON", "POST", v1+"/user/keys/query", map[string]any{})
	f.fails(400, "M_BAD_JSON", "POST", v1+"/user/keys/claim", map[string]any{"one_time_keys": []string{}})
}

func TestOpenID(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice, bob := a.Register("alice", "pw"), a.Register("bob", "pw")
	path := "/_matrix/client/v3/user/" + esc(alice.UserID) + "/openid/request_token"
	r := a.MustOK("POST", path, alice.AccessToken, map[string]any{})
	token := r.Get("access_token").String()
	if token == "" || r.Get("token_type").String() != "Bearer" || r.Get("matrix_server_name").String() != a.ServerName() || r.Get("expires_in").Int() != 3600 {
		t.Fatalf("request_token: %s", r)
	}
	// A third party (here b's unsigned client) exchanges it for the user ID.
	info, err := b.Server.Federation.KeyClient().LookupUserInfo(ctx(t), spec.ServerName(a.ServerName()), token)
	if err != nil || info.Sub != alice.UserID {
		t.Fatalf("userinfo: %+v %v", info, err)
	}
	a.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/federation/v1/openid/userinfo?access_token=nope", "", nil)
	a.ExpectError(401, "M_UNKNOWN_TOKEN", "GET", "/_matrix/federation/v1/openid/userinfo?access_token="+alice.AccessToken, "", nil)
	a.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/federation/v1/openid/userinfo", "", nil)

	a.ExpectError(403, "M_FORBIDDEN", "POST", path, bob.AccessToken, map[string]any{})
	a.ExpectError(401, "M_MISSING_TOKEN", "POST", path, "", map[string]any{})
	a.ExpectError(400, "M_NOT_JSON", "POST", path, alice.AccessToken, "nope")
}

// joinFromB makes a user of b join one of a's rooms as far as a knows: a
// takes a join event built and signed as b would make it (a's roomserver
// trusts what it is given; the federation API checks signatures first).
func (f *readsFixture) joinFromB(roomID, localpart string, prev string) string {
	f.t.Helper()
	rs := f.a.Server.Roomserver
	userID := "@" + localpart + ":" + f.b.ServerName()
	prevEv, err := rs.Event(ctx(f.t), prev)
	if err != nil {
		f.t.Fatal(err)
	}
	verImpl := gomatrixserverlib.MustGetRoomVersion(prevEv.Version())
	proto := gomatrixserverlib.ProtoEvent{
		SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID,
		Content: spec.RawJSON(`{"membership":"join"}`), PrevEvents: []string{prev}, Depth: prevEv.Depth() + 1,
	}
	needed, err := gomatrixserverlib.StateNeededForProtoEvent(&proto)
	if err != nil {
		f.t.Fatal(err)
	}
	var authIDs []string
	for _, tuple := range needed.Tuples() {
		ev, err := rs.CurrentStateEvent(ctx(f.t), roomID, tuple.EventType, tuple.StateKey)
		if err != nil {
			f.t.Fatal(err)
		}
		if ev != nil && !(ev.Type() == spec.MRoomCreate && verImpl.DomainlessRoomIDs()) {
			authIDs = append(authIDs, ev.EventID())
		}
	}
	proto.AuthEvents = authIDs
	join, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), spec.ServerName(f.b.ServerName()),
		gomatrixserverlib.KeyID(f.b.Server.Key.ID), f.b.Server.Key.PrivateKey)
	if err != nil {
		f.t.Fatal(err)
	}
	if res, err := rs.InputRemoteEvent(ctx(f.t), join); err != nil || res.Status != rsapi.InputAccepted {
		f.t.Fatalf("join from b: %+v %v", res, err)
	}
	return join.EventID()
}

func TestReadsForAMemberServer(t *testing.T) {
	// b's user joins the room whose history is for joined members only:
	// b now takes part, sees what came after the join, and gets what came
	// before it redacted from /backfill and not at all elsewhere.
	f := newReadsFixture(t)
	const v1 = "/_matrix/federation/v1"
	join := f.joinFromB(f.closed, "bob", f.closedM)
	after := f.send(f.closed, "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "hello bob"})

	r := f.ok("GET", v1+"/backfill/"+esc(f.closed)+"?v="+url.QueryEscape(after), nil)
	got := ids(t, r.Get("pdus"))
	if len(got) != 8 || got[0] != after || got[1] != join || got[2] != f.closedM {
		t.Fatalf("backfill: %v", got)
	}
	if body := r.Get("pdus.0.content.body").String(); body != "hello bob" {
		t.Fatalf("the message after the join: %s", r.Get("pdus.0").Raw)
	}
	if secret := r.Get("pdus.2"); secret.Get("content.body").Exists() || secret.Get("type").String() != "m.room.message" {
		t.Fatalf("the message before the join is not redacted: %s", secret.Raw)
	}
	if !r.Get("pdus.#(type==m.room.create).content.room_version").Exists() {
		t.Fatalf("the create event keeps its content when redacted: %s", r.Raw)
	}

	m := f.ok("POST", v1+"/get_missing_events/"+esc(f.closed), map[string]any{"earliest_events": []string{}, "latest_events": []string{after}, "limit": 20})
	// The room's first events came before its history visibility was set
	// (so were shared, and b has a user joined now); the secret was sent
	// while it was "joined" and b had nobody in the room.
	got = ids(t, m.Get("events"))
	if len(got) != 6 || got[5] != join || slices.Contains(got, f.closedM) || m.Get("events.0.type").String() != "m.room.create" {
		t.Fatalf("get_missing_events sends only what b may see, oldest first: %v", got)
	}
	f.ok("GET", v1+"/event/"+esc(after), nil)
	f.ok("GET", v1+"/event/"+esc(join), nil)
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/event/"+esc(f.closedM), nil)
	f.ok("GET", v1+"/state_ids/"+esc(f.closed)+"?event_id="+url.QueryEscape(join), nil)
	f.ok("GET", v1+"/state_ids/"+esc(f.closed)+"?event_id="+url.QueryEscape(after), nil)
	f.fails(403, "M_FORBIDDEN", "GET", v1+"/state_ids/"+esc(f.closed)+"?event_id="+url.QueryEscape(f.closedM), nil)
	f.ok("GET", v1+"/event_auth/"+esc(f.closed)+"/"+esc(f.closedM), nil)
	secret, err := f.a.Server.Roomserver.Event(ctx(t), f.closedM)
	if err != nil {
		t.Fatal(err)
	}
	ts := strconv.FormatInt(int64(secret.OriginServerTS()), 10)
	if r := f.ok("GET", v1+"/timestamp_to_event/"+esc(f.closed)+"?dir=f&ts="+ts, nil); r.Get("event_id").String() == f.closedM {
		t.Fatalf("timestamp_to_event finds an event b may not see: %s", r.Raw)
	}
}
