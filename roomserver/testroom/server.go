package testroom

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// KeyID is the ID of every test server's signing key.
const KeyID gomatrixserverlib.KeyID = "ed25519:test"

// A Server is a homeserver name with an ed25519 signing key. The key is
// derived from the name, so the same server signs the same bytes the same
// way in every run (and room versions 3+ get the same event IDs).
type Server struct {
	Name       spec.ServerName
	KeyID      gomatrixserverlib.KeyID
	PublicKey  ed25519.PublicKey
	PrivateKey ed25519.PrivateKey
}

// NewServer makes a test server called name, such as "a.test".
func NewServer(t testing.TB, name string) *Server {
	t.Helper()
	if _, err := spec.NewUserID("@x:"+name, false); err != nil {
		t.Fatalf("testroom.NewServer(%q): not a server name: %v", name, err)
	}
	seed := sha256.Sum256([]byte("plexus testroom signing key for " + name))
	priv := ed25519.NewKeyFromSeed(seed[:])
	return &Server{
		Name:       spec.ServerName(name),
		KeyID:      KeyID,
		PublicKey:  priv.Public().(ed25519.PublicKey),
		PrivateKey: priv,
	}
}

// User returns the user @localpart:server.
func (s *Server) User(localpart string) *User {
	return &User{Server: s, Localpart: localpart}
}

// A User is a Matrix user on a test server.
type User struct {
	Server    *Server
	Localpart string
}

// ID is the full user ID, such as "@alice:a.test".
func (u *User) ID() string { return fmt.Sprintf("@%s:%s", u.Localpart, u.Server.Name) }

// SenderID is the user ID as it appears in the sender of events (the same
// thing outside pseudo-ID rooms).
func (u *User) SenderID() spec.SenderID { return spec.SenderID(u.ID()) }

func (u *User) String() string { return u.ID() }

// Verifier checks signatures made by the given test servers. It implements
// gomatrixserverlib.JSONVerifier, so it can stand in for a key ring:
//
//	gomatrixserverlib.VerifyEventSignatures(ctx, ev, testroom.NewVerifier(a, b), userIDForSender)
type Verifier struct {
	servers map[spec.ServerName]*Server
}

// NewVerifier trusts the keys of the given servers and no others.
func NewVerifier(servers ...*Server) *Verifier {
	v := &Verifier{servers: make(map[spec.ServerName]*Server, len(servers))}
	for _, s := range servers {
		v.servers[s.Name] = s
	}
	return v
}

// VerifyJSONs implements gomatrixserverlib.JSONVerifier.
func (v *Verifier) VerifyJSONs(_ context.Context, requests []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	results := make([]gomatrixserverlib.VerifyJSONResult, len(requests))
	for i, req := range requests {
		s, ok := v.servers[req.ServerName]
		if !ok {
			results[i].Error = fmt.Errorf("testroom: no key for server %q", req.ServerName)
			continue
		}
		results[i].Error = gomatrixserverlib.VerifyJSON(string(s.Name), s.KeyID, s.PublicKey, req.Message)
	}
	return results, nil
}

// userIDForSender maps sender IDs to user IDs in rooms without pseudo IDs.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}
