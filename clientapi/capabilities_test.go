package clientapi_test

import (
	"strconv"
	"testing"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestCapabilities(t *testing.T) {
	s := testserver.New(t, func(c *config.Config) { c.Registration.GuestAccess = true })
	s.ExpectError(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v3/capabilities", "", nil)
	u := s.Register("alice", "pw")
	r := s.MustOK("GET", "/_matrix/client/v3/capabilities", u.AccessToken, nil)
	c := r.Get("capabilities")
	for key, want := range map[string]bool{
		"m\\.change_password":          true,
		"m\\.set_displayname":          true,
		"m\\.set_avatar_url":           true,
		"m\\.3pid_changes":             false,
		"m\\.get_login_token":          true,
		"m\\.forget_forced_upon_leave": false,
		"m\\.profile_fields":           true,
	} {
		if v := c.Get(key + ".enabled"); !v.Exists() || v.Bool() != want {
			t.Errorf("%s.enabled = %s, want %v", key, v.Raw, want)
		}
	}
	if got := c.Get("m\\.profile_fields.allowed").Raw; got != `["displayname","avatar_url"]` {
		t.Errorf("m.profile_fields.allowed = %s", got)
	}
	if c.Get("m\\.account_moderation").Exists() {
		t.Errorf("m.account_moderation is offered: %s", r)
	}
	versions := c.Get("m\\.room_versions")
	if versions.Get("default").String() != "12" {
		t.Errorf("default room version: %s", versions.Raw)
	}
	available := versions.Get("available").Map()
	if len(available) != 12 {
		t.Errorf("available room versions: %s", versions.Raw)
	}
	for v := 1; v <= 12; v++ {
		if available[strconv.Itoa(v)].String() != "stable" {
			t.Errorf("room version %d: %s", v, versions.Raw)
		}
	}
	if r := s.MustOK("GET", "/_matrix/client/r0/capabilities", u.AccessToken, nil); r.Get("capabilities.m\\.room_versions.default").String() != "12" {
		t.Errorf("r0: %s", r)
	}

	// Guests have no password and may only change their display name.
	g := s.MustOK("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	gc := s.MustOK("GET", "/_matrix/client/v3/capabilities", g.Get("access_token").String(), nil).Get("capabilities")
	if gc.Get("m\\.change_password.enabled").Bool() || gc.Get("m\\.set_avatar_url.enabled").Bool() ||
		!gc.Get("m\\.set_displayname.enabled").Bool() || gc.Get("m\\.get_login_token.enabled").Bool() || gc.Get("m\\.profile_fields.allowed").Raw != `["displayname"]` {
		t.Errorf("guest capabilities: %s", gc.Raw)
	}
}
