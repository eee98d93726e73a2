package clientapi_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func withRateLimits(c *config.Config) {
	c.RateLimit = config.RateLimit{Enabled: true, RequestsPerSecond: 1, Burst: 3, AuthPerMinute: 1, AuthBurst: 2}
}

// expectLimited sends the request until the server answers 429 and checks
// the retry hints. The first burst requests must succeed.
func expectLimited(t *testing.T, s *testserver.Server, burst int, method, path, token string, body any) {
	t.Helper()
	for i := 0; i < burst+5; i++ {
		r := s.Request(method, path, token, body)
		if r.Status == http.StatusOK {
			continue
		}
		if i < burst {
			t.Fatalf("request %d of the burst of %d: %s", i+1, burst, r)
		}
		if r.Status != http.StatusTooManyRequests || r.Get("errcode").String() != "M_LIMIT_EXCEEDED" {
			t.Fatalf("request %d: got %s, want 429 M_LIMIT_EXCEEDED", i+1, r)
		}
		if r.Get("retry_after_ms").Int() <= 0 {
			t.Fatalf("no retry_after_ms: %s", r)
		}
		if secs, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || secs < 1 {
			t.Fatalf("Retry-After %q", r.Header.Get("Retry-After"))
		}
		return
	}
	t.Fatalf("%s %s was never limited", method, path)
}

func TestRateLimiting(t *testing.T) {
	s := testserver.New(t, withRateLimits)
	ctx := context.Background()
	// Users are made directly so that registering uses none of the
	// login bucket this test measures.
	token := func(localpart string) string {
		if _, err := s.Server.Accounts.CreateAccount(ctx, localpart, "pw", false, false); err != nil {
			t.Fatal(err)
		}
		_, tok, err := s.Server.Accounts.CreateDevice(ctx, localpart, accounts.NewDevice{})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	alice, bob := token("alice"), token("bob")

	expectLimited(t, s, 3, "GET", "/_matrix/client/v3/account/whoami", alice, nil)
	// The limit is per user, not per address: bob shares alice's IP.
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", bob, nil)

	// Login has the stricter bucket, by IP address.
	login := map[string]any{
		"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "alice"}, "password": "pw",
	}
	expectLimited(t, s, 2, "POST", "/_matrix/client/v3/login", "", login)
	// Registration shares it, whoever asks.
	s.ExpectError(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "carol", "password": "pw", "auth": map[string]string{"type": "m.login.dummy"},
	})
	// A logged-in user's requests are not counted against the IP's login bucket.
	s.MustOK("GET", "/_matrix/client/v3/account/whoami", bob, nil)
}

func TestRateLimitingOff(t *testing.T) {
	s := testserver.New(t)
	u := s.Register("alice", "pw")
	for range 20 {
		s.MustOK("GET", "/_matrix/client/v3/account/whoami", u.AccessToken, nil)
		s.Login("alice", "pw")
	}
}
