package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestServerNoticeCommand(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	if _, err := s.Server.Accounts.CreateAccount(context.Background(), "admin", "pw", true, false); err != nil {
		t.Fatal(err)
	}
	admin := s.Login("admin", "pw")
	var out, errOut bytes.Buffer
	err := serverNotice([]string{"--url", s.URL, "--token", admin.AccessToken, "--user", alice.UserID, "--body", "Hello"}, &out, &errOut)
	if err != nil || !strings.HasPrefix(out.String(), "Sent $") {
		t.Fatalf("server-notice: %v %q %q", err, out.String(), errOut.String())
	}
	// Not an admin: the server's error is shown.
	err = serverNotice([]string{"--url", s.URL, "--token", alice.AccessToken, "--user", alice.UserID, "--body", "Hello"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "M_FORBIDDEN") {
		t.Fatalf("non-admin token: %v", err)
	}
	if err := serverNotice([]string{"--url", s.URL, "--user", alice.UserID}, &out, &errOut); err == nil {
		t.Fatal("no token and no body accepted")
	}
}
