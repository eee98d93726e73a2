package federationapi_test

import (
	"net/url"
	"testing"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// A client on A asks about B: a profile, an alias and the public room
// directory, each relayed over federation.
func TestRemoteQueriesForClients(t *testing.T) {
	servers := testserver.NewFederated(t, 2)
	a, b := servers[0], servers[1]
	alice := a.Register("alice", "pw")
	bob := b.Register("bob", "pw")
	b.MustOK("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(bob.UserID)+"/displayname", bob.AccessToken, map[string]string{"displayname": "Bob on B"})
	room := b.MustOK("POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{
		"preset": "public_chat", "visibility": "public", "room_alias_name": "lobby", "name": "Lobby",
	}).Get("room_id").String()

	p := a.MustOK("GET", "/_matrix/client/v3/profile/"+url.PathEscape(bob.UserID), alice.AccessToken, nil)
	if p.Get("displayname").String() != "Bob on B" {
		t.Fatalf("remote profile: %s", p)
	}
	a.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/profile/"+url.PathEscape("@nobody:"+b.ServerName()), alice.AccessToken, nil)

	alias := "#lobby:" + b.ServerName()
	d := a.MustOK("GET", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), alice.AccessToken, nil)
	if d.Get("room_id").String() != room || d.Get("servers.0").String() != b.ServerName() {
		t.Fatalf("remote alias: %s", d)
	}
	a.ExpectError(404, "M_NOT_FOUND", "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape("#none:"+b.ServerName()), alice.AccessToken, nil)

	pr := a.MustOK("POST", "/_matrix/client/v3/publicRooms?server="+url.QueryEscape(b.ServerName()), alice.AccessToken, map[string]any{"limit": 10})
	if pr.Get("chunk.#(room_id=="+room+").name").String() != "Lobby" {
		t.Fatalf("remote directory: %s", pr)
	}
	// A server that does not answer is a gateway error, not ours.
	a.ExpectError(502, "M_UNKNOWN", "POST", "/_matrix/client/v3/publicRooms?server=127.0.0.1:1", alice.AccessToken, map[string]any{})
}
