package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func newTest(t *testing.T, db *storage.DB, lifetime time.Duration) *Accounts {
	t.Helper()
	a, err := New(context.Background(), db, Options{BcryptCost: bcrypt.MinCost, AccessTokenLifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustCreate(t *testing.T, a *Accounts, localpart, password string) {
	t.Helper()
	if _, err := a.CreateAccount(context.Background(), localpart, password, false, false); err != nil {
		t.Fatalf("create %s: %v", localpart, err)
	}
}

func mustDevice(t *testing.T, a *Accounts, localpart string, nd NewDevice) (*Device, Tokens) {
	t.Helper()
	d, tok, err := a.CreateDevice(context.Background(), localpart, nd)
	if err != nil {
		t.Fatalf("create device for %s: %v", localpart, err)
	}
	return d, tok
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

func TestNewRejectsBadCost(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		if _, err := New(context.Background(), db, Options{BcryptCost: 99}); err == nil {
			t.Fatal("cost 99 accepted")
		}
		// Running the migrations twice is harmless.
		newTest(t, db, 0)
		a := newTest(t, db, 0)
		if a.bcryptCost != bcrypt.MinCost || a.lifetime != defaultAccessTokenLifetime {
			t.Fatalf("cost %d lifetime %v", a.bcryptCost, a.lifetime)
		}
	})
}

func TestCreateAccount(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		acc, err := a.CreateAccount(ctx, "Alice", "pw", true, false)
		if err != nil {
			t.Fatal(err)
		}
		if acc.Localpart != "alice" || !acc.IsAdmin || acc.IsGuest || acc.Deactivated || acc.CreatedTS == 0 {
			t.Fatalf("created %+v", acc)
		}
		if _, err := a.CreateAccount(ctx, "guest1", "", false, true); err != nil {
			t.Fatal(err)
		}

		tests := []struct {
			name      string
			localpart string
			wantErr   error
			available bool
			admin     bool
			guest     bool
		}{
			{"exact", "alice", nil, false, true, false},
			{"other case", "ALICE", nil, false, true, false},
			{"guest", "Guest1", nil, false, false, true},
			{"unknown", "bob", ErrNotFound, true, false, false},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				got, err := a.Account(ctx, tc.localpart)
				wantErr(t, "Account", err, tc.wantErr)
				if err == nil && (got.Localpart != strings.ToLower(tc.localpart) || got.IsAdmin != tc.admin || got.IsGuest != tc.guest) {
					t.Fatalf("Account = %+v", got)
				}
				avail, err := a.LocalpartAvailable(ctx, tc.localpart)
				if err != nil || avail != tc.available {
					t.Fatalf("LocalpartAvailable = %v, %v; want %v", avail, err, tc.available)
				}
			})
		}

		for _, taken := range []string{"alice", "aLiCe", "GUEST1"} {
			_, err := a.CreateAccount(ctx, taken, "x", false, false)
			wantErr(t, "CreateAccount "+taken, err, ErrUserInUse)
		}
	})
}

func TestPasswords(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		long := strings.Repeat("p", 100)
		mustCreate(t, a, "alice", "secret")
		mustCreate(t, a, "nopw", "")
		mustCreate(t, a, "long", long)
		mustCreate(t, a, "gone", "bye")
		if err := a.Deactivate(ctx, "gone"); err != nil {
			t.Fatal(err)
		}

		tests := []struct {
			name, localpart, password string
			wantErr                   error
		}{
			{"right", "alice", "secret", nil},
			{"localpart case", "ALICE", "secret", nil},
			{"wrong", "alice", "Secret", ErrWrongPassword},
			{"empty given", "alice", "", ErrWrongPassword},
			{"unknown user", "bob", "secret", ErrNotFound},
			{"no password account", "nopw", "", ErrWrongPassword},
			{"no password account, some password", "nopw", "x", ErrWrongPassword},
			{"over 72 bytes", "long", long, nil},
			{"deactivated, right password", "gone", "bye", ErrDeactivated},
			{"deactivated, wrong password", "gone", "nope", ErrWrongPassword},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				acc, err := a.CheckPassword(ctx, tc.localpart, tc.password)
				wantErr(t, "CheckPassword", err, tc.wantErr)
				if err == nil && acc.Localpart != strings.ToLower(tc.localpart) {
					t.Fatalf("account %+v", acc)
				}
			})
		}

		if err := a.SetPassword(ctx, "Alice", "new"); err != nil {
			t.Fatal(err)
		}
		_, err := a.CheckPassword(ctx, "alice", "secret")
		wantErr(t, "old password", err, ErrWrongPassword)
		if _, err := a.CheckPassword(ctx, "alice", "new"); err != nil {
			t.Fatalf("new password: %v", err)
		}
		if err := a.SetPassword(ctx, "alice", ""); err != nil {
			t.Fatal(err)
		}
		_, err = a.CheckPassword(ctx, "alice", "new")
		wantErr(t, "password removed", err, ErrWrongPassword)
		wantErr(t, "SetPassword unknown", a.SetPassword(ctx, "bob", "x"), ErrNotFound)
	})
}

func TestDevicesAndAuthenticate(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		if _, err := a.CreateAccount(ctx, "alice", "pw", true, false); err != nil {
			t.Fatal(err)
		}
		mustCreate(t, a, "bob", "pw")

		dev, tok := mustDevice(t, a, "Alice", NewDevice{DisplayName: "Laptop", IP: "10.0.0.1"})
		if !regexp.MustCompile(`^[A-Z]{10}$`).MatchString(dev.DeviceID) {
			t.Fatalf("device ID %q", dev.DeviceID)
		}
		if dev.Localpart != "alice" || dev.DisplayName != "Laptop" || dev.LastSeenIP != "10.0.0.1" || dev.LastSeenTS == 0 {
			t.Fatalf("device %+v", dev)
		}
		if !strings.HasPrefix(tok.AccessToken, accessTokenPrefix) || tok.RefreshToken != "" || tok.ExpiresIn != 0 {
			t.Fatalf("tokens %+v", tok)
		}
		// Bob may use the same device ID: IDs are per user.
		bobDev, bobTok := mustDevice(t, a, "bob", NewDevice{DeviceID: dev.DeviceID})

		tests := []struct {
			name    string
			token   string
			wantErr error
			want    Session
		}{
			{"alice", tok.AccessToken, nil, Session{Localpart: "alice", DeviceID: dev.DeviceID, IsAdmin: true}},
			{"bob", bobTok.AccessToken, nil, Session{Localpart: "bob", DeviceID: bobDev.DeviceID}},
			{"unknown", "plx_nonsense", ErrUnknownToken, Session{}},
			{"empty", "", ErrUnknownToken, Session{}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				s, err := a.Authenticate(ctx, tc.token, "10.0.0.2")
				wantErr(t, "Authenticate", err, tc.wantErr)
				if err == nil && *s != tc.want {
					t.Fatalf("session %+v, want %+v", *s, tc.want)
				}
			})
		}

		_, _, err := a.CreateDevice(ctx, "carol", NewDevice{})
		wantErr(t, "CreateDevice unknown user", err, ErrNotFound)

		got, err := a.Device(ctx, "ALICE", dev.DeviceID)
		if err != nil || got.DisplayName != "Laptop" {
			t.Fatalf("Device = %+v, %v", got, err)
		}
		_, err = a.Device(ctx, "alice", "NOSUCHDEV")
		wantErr(t, "Device unknown", err, ErrNotFound)

		if err := a.SetDeviceDisplayName(ctx, "alice", dev.DeviceID, "Work"); err != nil {
			t.Fatal(err)
		}
		if got, _ := a.Device(ctx, "alice", dev.DeviceID); got.DisplayName != "Work" {
			t.Fatalf("renamed device %+v", got)
		}
		wantErr(t, "rename unknown device", a.SetDeviceDisplayName(ctx, "alice", "NOSUCHDEV", "x"), ErrNotFound)
		if got, _ := a.Device(ctx, "bob", bobDev.DeviceID); got.DisplayName != "" {
			t.Fatalf("renaming alice's device renamed bob's: %+v", got)
		}
	})
}

func TestReloginWithSameDeviceID(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		d1, tok1 := mustDevice(t, a, "alice", NewDevice{DeviceID: "PHONE", DisplayName: "Phone", Refreshable: true})

		steps := []struct {
			name, displayName, wantName string
		}{
			{"no new name keeps the old", "", "Phone"},
			{"a new name replaces it", "Tablet", "Tablet"},
		}
		prev := tok1
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				d, tok := mustDevice(t, a, "alice", NewDevice{DeviceID: "PHONE", DisplayName: st.displayName})
				if d.DeviceID != d1.DeviceID || d.DisplayName != st.wantName {
					t.Fatalf("device %+v", d)
				}
				_, err := a.Authenticate(ctx, prev.AccessToken, "")
				wantErr(t, "old access token", err, ErrUnknownToken)
				if s, err := a.Authenticate(ctx, tok.AccessToken, ""); err != nil || s.DeviceID != "PHONE" {
					t.Fatalf("new token: %+v, %v", s, err)
				}
				prev = tok
			})
		}
		_, err := a.Refresh(ctx, tok1.RefreshToken)
		wantErr(t, "old refresh token", err, ErrUnknownToken)
		devs, err := a.Devices(ctx, "alice")
		if err != nil || len(devs) != 1 {
			t.Fatalf("Devices = %+v, %v", devs, err)
		}
	})
}

func TestRefresh(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		dev, tok := mustDevice(t, a, "alice", NewDevice{Refreshable: true})
		if !strings.HasPrefix(tok.RefreshToken, refreshTokenPrefix) || tok.ExpiresIn != defaultAccessTokenLifetime {
			t.Fatalf("tokens %+v", tok)
		}
		if _, err := a.Authenticate(ctx, tok.AccessToken, ""); err != nil {
			t.Fatal(err)
		}

		tok2, err := a.Refresh(ctx, tok.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if tok2.AccessToken == tok.AccessToken || tok2.RefreshToken == tok.RefreshToken || tok2.RefreshToken == "" {
			t.Fatalf("tokens not rotated: %+v", tok2)
		}
		if s, err := a.Authenticate(ctx, tok2.AccessToken, ""); err != nil || s.DeviceID != dev.DeviceID {
			t.Fatalf("new access token: %+v, %v", s, err)
		}

		tests := []struct {
			name    string
			use     func() error
			wantErr error
		}{
			{"old access token", func() error { _, err := a.Authenticate(ctx, tok.AccessToken, ""); return err }, ErrUnknownToken},
			{"old refresh token", func() error { _, err := a.Refresh(ctx, tok.RefreshToken); return err }, ErrUnknownToken},
			{"unknown refresh token", func() error { _, err := a.Refresh(ctx, "plxr_nonsense"); return err }, ErrUnknownToken},
			{"access token as refresh token", func() error { _, err := a.Refresh(ctx, tok2.AccessToken); return err }, ErrUnknownToken},
			{"new refresh token", func() error { _, err := a.Refresh(ctx, tok2.RefreshToken); return err }, nil},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.name, tc.use(), tc.wantErr) })
		}

		// A refresh token dies with its device.
		_, tok3 := mustDevice(t, a, "alice", NewDevice{Refreshable: true})
		if _, err := a.Authenticate(ctx, tok3.AccessToken, ""); err != nil {
			t.Fatal(err)
		}
		devs, _ := a.Devices(ctx, "alice")
		var ids []string
		for _, d := range devs {
			ids = append(ids, d.DeviceID)
		}
		if err := a.DeleteDevices(ctx, "alice", ids); err != nil {
			t.Fatal(err)
		}
		_, err = a.Authenticate(ctx, tok3.AccessToken, "")
		wantErr(t, "access token of deleted device (used before)", err, ErrUnknownToken)
		_, err = a.Refresh(ctx, tok3.RefreshToken)
		wantErr(t, "refresh token of deleted device", err, ErrUnknownToken)
	})
}

func TestAccessTokenExpiry(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, time.Millisecond)
		mustCreate(t, a, "alice", "pw")
		_, tok := mustDevice(t, a, "alice", NewDevice{Refreshable: true})
		_, plain := mustDevice(t, a, "alice", NewDevice{})
		time.Sleep(5 * time.Millisecond)

		_, err := a.Authenticate(ctx, tok.AccessToken, "")
		wantErr(t, "expired token", err, ErrTokenExpired)
		// Tokens issued without a refresh token never expire.
		if _, err := a.Authenticate(ctx, plain.AccessToken, ""); err != nil {
			t.Fatalf("non-refreshable token: %v", err)
		}
		// An expired access token can still be refreshed.
		tok2, err := a.Refresh(ctx, tok.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if tok2.ExpiresIn != time.Millisecond {
			t.Fatalf("ExpiresIn = %v", tok2.ExpiresIn)
		}
		time.Sleep(5 * time.Millisecond)
		_, err = a.Authenticate(ctx, tok2.AccessToken, "")
		wantErr(t, "refreshed token expired too", err, ErrTokenExpired)
	})
}

func TestDeleteDevices(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		mustCreate(t, a, "bob", "pw")
		toks := map[string]Tokens{}
		for _, id := range []string{"D1", "D2", "D3", "D4"} {
			_, toks[id] = mustDevice(t, a, "alice", NewDevice{DeviceID: id})
		}
		_, bobTok := mustDevice(t, a, "bob", NewDevice{DeviceID: "D1"})

		steps := []struct {
			name string
			do   func() error
			want []string // alice's remaining devices
		}{
			{"delete some, unknown ignored", func() error { return a.DeleteDevices(ctx, "ALICE", []string{"D1", "NOPE"}) }, []string{"D2", "D3", "D4"}},
			{"delete none", func() error { return a.DeleteDevices(ctx, "alice", nil) }, []string{"D2", "D3", "D4"}},
			{"delete all but one", func() error { return a.DeleteAllDevices(ctx, "alice", "D3") }, []string{"D3"}},
			{"delete all", func() error { return a.DeleteAllDevices(ctx, "alice", "") }, nil},
		}
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				if err := st.do(); err != nil {
					t.Fatal(err)
				}
				devs, err := a.Devices(ctx, "alice")
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, d := range devs {
					got = append(got, d.DeviceID)
				}
				if fmt.Sprint(got) != fmt.Sprint(st.want) {
					t.Fatalf("devices %v, want %v", got, st.want)
				}
				for id, tok := range toks {
					_, err := a.Authenticate(ctx, tok.AccessToken, "")
					alive := strings.Contains(fmt.Sprint(st.want), id)
					if alive && err != nil || !alive && !errors.Is(err, ErrUnknownToken) {
						t.Fatalf("token of %s (alive %v): %v", id, alive, err)
					}
				}
				// Bob's device with the same ID is untouched.
				if _, err := a.Authenticate(ctx, bobTok.AccessToken, ""); err != nil {
					t.Fatalf("bob's token: %v", err)
				}
			})
		}
	})
}

func TestLastSeenIsThrottled(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		dev, tok := mustDevice(t, a, "alice", NewDevice{IP: "10.0.0.1"})
		hash := hashToken(tok.AccessToken)
		lastIP := func() string {
			d, err := a.Device(ctx, "alice", dev.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			return d.LastSeenIP
		}

		// Right after login: recorded by the login, not written again.
		if _, err := a.Authenticate(ctx, tok.AccessToken, "10.0.0.2"); err != nil {
			t.Fatal(err)
		}
		if ip := lastIP(); ip != "10.0.0.1" {
			t.Fatalf("last seen IP %q right after login", ip)
		}
		// A minute later the next request writes.
		a.mu.Lock()
		a.lastSeen[hash] -= lastSeenInterval.Milliseconds()
		a.mu.Unlock()
		if _, err := a.Authenticate(ctx, tok.AccessToken, "10.0.0.3"); err != nil {
			t.Fatal(err)
		}
		if ip := lastIP(); ip != "10.0.0.3" {
			t.Fatalf("last seen IP %q, want 10.0.0.3", ip)
		}
		// The map does not grow without bound.
		a.mu.Lock()
		for i := len(a.lastSeen); i < maxLastSeen; i++ {
			a.lastSeen[fmt.Sprint(i)] = 0
		}
		a.mu.Unlock()
		a.markSeen("x", 1)
		if n := len(a.lastSeen); n != 1 {
			t.Fatalf("map has %d entries after reaching the bound", n)
		}
	})
}

func TestDeactivate(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		mustCreate(t, a, "bob", "pw")
		_, tok := mustDevice(t, a, "alice", NewDevice{Refreshable: true})
		_, bobTok := mustDevice(t, a, "bob", NewDevice{})
		if _, err := a.PutAccountData(ctx, "alice", "", "m.x", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}

		if err := a.Deactivate(ctx, "ALICE"); err != nil {
			t.Fatal(err)
		}
		wantErr(t, "Deactivate unknown", a.Deactivate(ctx, "carol"), ErrNotFound)

		acc, err := a.Account(ctx, "alice")
		if err != nil || !acc.Deactivated {
			t.Fatalf("Account = %+v, %v", acc, err)
		}
		if avail, err := a.LocalpartAvailable(ctx, "alice"); err != nil || avail {
			t.Fatalf("LocalpartAvailable = %v, %v", avail, err)
		}
		if devs, err := a.Devices(ctx, "alice"); err != nil || len(devs) != 0 {
			t.Fatalf("Devices = %+v, %v", devs, err)
		}
		checks := []struct {
			name    string
			err     error
			wantErr error
		}{
			{"access token", second(a.Authenticate(ctx, tok.AccessToken, "")), ErrUnknownToken},
			{"refresh token", second(a.Refresh(ctx, tok.RefreshToken)), ErrUnknownToken},
			{"profile", second(a.Profile(ctx, "alice")), ErrNotFound},
			{"set display name", a.SetDisplayName(ctx, "alice", "x"), ErrNotFound},
			{"set avatar", a.SetAvatarURL(ctx, "alice", "mxc://x/y"), ErrNotFound},
			{"new login", third(a.CreateDevice(ctx, "alice", NewDevice{})), ErrDeactivated},
			{"re-register", second(a.CreateAccount(ctx, "Alice", "pw", false, false)), ErrUserInUse},
			{"again", a.Deactivate(ctx, "alice"), nil},
			{"bob unaffected", second(a.Authenticate(ctx, bobTok.AccessToken, "")), nil},
		}
		for _, c := range checks {
			t.Run(c.name, func(t *testing.T) { wantErr(t, c.name, c.err, c.wantErr) })
		}
	})
}

func second[A any](_ A, err error) error        { return err }
func third[A, B any](_ A, _ B, err error) error { return err }

func TestProfile(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "Alice", "pw")
		mustCreate(t, a, "bob", "pw")

		steps := []struct {
			name string
			do   func() error
			want Profile
		}{
			{"defaults", func() error { return nil }, Profile{DisplayName: "alice"}},
			{"display name", func() error { return a.SetDisplayName(ctx, "ALICE", "Alice A.") }, Profile{DisplayName: "Alice A."}},
			{"avatar", func() error { return a.SetAvatarURL(ctx, "alice", "mxc://ex/abc") }, Profile{DisplayName: "Alice A.", AvatarURL: "mxc://ex/abc"}},
			{"clear", func() error { return a.SetDisplayName(ctx, "alice", "") }, Profile{AvatarURL: "mxc://ex/abc"}},
		}
		for _, st := range steps {
			t.Run(st.name, func(t *testing.T) {
				if err := st.do(); err != nil {
					t.Fatal(err)
				}
				p, err := a.Profile(ctx, "Alice")
				if err != nil || p != st.want {
					t.Fatalf("Profile = %+v, %v; want %+v", p, err, st.want)
				}
			})
		}
		if p, err := a.Profile(ctx, "bob"); err != nil || p != (Profile{DisplayName: "bob"}) {
			t.Fatalf("bob's profile %+v, %v", p, err)
		}
		_, err := a.Profile(ctx, "carol")
		wantErr(t, "Profile unknown", err, ErrNotFound)
		wantErr(t, "SetDisplayName unknown", a.SetDisplayName(ctx, "carol", "x"), ErrNotFound)
		wantErr(t, "SetAvatarURL unknown", a.SetAvatarURL(ctx, "carol", "x"), ErrNotFound)
	})
}

func TestAccountData(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		mustCreate(t, a, "bob", "pw")

		puts := []struct {
			user, room, typ, content string
		}{
			{"alice", "", "m.push_rules", `{"a":1}`},
			{"alice", "!r:ex", "m.tag", `{"tags":{}}`},
			{"bob", "", "m.push_rules", `{"b":1}`},
			{"ALICE", "", "m.push_rules", `{"a":2}`}, // overwrite
			{"alice", "", "m.direct", `{}`},
		}
		var pos []int64
		for _, p := range puts {
			n, err := a.PutAccountData(ctx, p.user, p.room, p.typ, json.RawMessage(p.content))
			if err != nil {
				t.Fatal(err)
			}
			if len(pos) > 0 && n <= pos[len(pos)-1] {
				t.Fatalf("position %d after %d", n, pos[len(pos)-1])
			}
			pos = append(pos, n)
		}

		gets := []struct {
			user, room, typ, want string
			wantErr               error
		}{
			{"alice", "", "m.push_rules", `{"a":2}`, nil},
			{"Alice", "!r:ex", "m.tag", `{"tags":{}}`, nil},
			{"bob", "", "m.push_rules", `{"b":1}`, nil},
			{"alice", "!r:ex", "m.push_rules", "", ErrNotFound},
			{"bob", "", "m.direct", "", ErrNotFound},
		}
		for _, g := range gets {
			t.Run("get "+g.user+g.room+g.typ, func(t *testing.T) {
				got, err := a.AccountData(ctx, g.user, g.room, g.typ)
				wantErr(t, "AccountData", err, g.wantErr)
				if err == nil && string(got) != g.want {
					t.Fatalf("content %s, want %s", got, g.want)
				}
			})
		}

		last := pos[len(pos)-1]
		since := []struct {
			name  string
			user  string
			since int64
			want  []string // type@room, in stream order
		}{
			{"all of alice", "alice", 0, []string{"m.tag@!r:ex", "m.push_rules@", "m.direct@"}},
			{"alice after the tag", "alice", pos[1], []string{"m.push_rules@", "m.direct@"}},
			{"alice after everything", "alice", last, nil},
			{"bob", "bob", 0, []string{"m.push_rules@"}},
			{"bob after his write", "bob", pos[2], nil},
			{"unknown user", "carol", 0, nil},
		}
		for _, s := range since {
			t.Run(s.name, func(t *testing.T) {
				entries, cur, err := a.AccountDataSince(ctx, s.user, s.since)
				if err != nil {
					t.Fatal(err)
				}
				if cur != last {
					t.Fatalf("stream position %d, want %d", cur, last)
				}
				var got []string
				for _, e := range entries {
					got = append(got, e.Type+"@"+e.RoomID)
					if e.StreamPos <= s.since {
						t.Fatalf("entry %+v not after %d", e, s.since)
					}
				}
				if fmt.Sprint(got) != fmt.Sprint(s.want) {
					t.Fatalf("entries %v, want %v", got, s.want)
				}
			})
		}

		_, err := a.PutAccountData(ctx, "carol", "", "m.x", json.RawMessage(`{}`))
		wantErr(t, "PutAccountData unknown user", err, ErrNotFound)
	})
}

func TestAccountDataConcurrentPositionsAreUnique(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		const workers, each = 8, 5
		var mu sync.Mutex
		seen := map[int64]bool{}
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					n, err := a.PutAccountData(ctx, "alice", "", fmt.Sprintf("t%d.%d", w, i), json.RawMessage(`{}`))
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					seen[n] = true
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(seen) != workers*each {
			t.Fatalf("%d distinct positions for %d writes", len(seen), workers*each)
		}
		entries, cur, err := a.AccountDataSince(ctx, "alice", 0)
		if err != nil || len(entries) != workers*each || cur != workers*each {
			t.Fatalf("AccountDataSince: %d entries, pos %d, %v", len(entries), cur, err)
		}
	})
}

func TestFilters(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		mustCreate(t, a, "bob", "pw")

		ids := map[string]string{}
		for _, p := range []struct{ user, filter string }{
			{"alice", `{"room":{"timeline":{"limit":10}}}`},
			{"ALICE", `{"presence":{"types":[]}}`},
			{"bob", `{"b":true}`},
		} {
			id, err := a.PutFilter(ctx, p.user, json.RawMessage(p.filter))
			if err != nil {
				t.Fatal(err)
			}
			ids[p.filter] = id
		}
		if ids[`{"room":{"timeline":{"limit":10}}}`] == ids[`{"presence":{"types":[]}}`] {
			t.Fatal("two filters of alice share an ID")
		}

		tests := []struct {
			name, user, id, want string
			wantErr              error
		}{
			{"first", "alice", ids[`{"room":{"timeline":{"limit":10}}}`], `{"room":{"timeline":{"limit":10}}}`, nil},
			{"second", "Alice", ids[`{"presence":{"types":[]}}`], `{"presence":{"types":[]}}`, nil},
			{"bob's own", "bob", ids[`{"b":true}`], `{"b":true}`, nil},
			{"alice's second is not bob's", "bob", ids[`{"presence":{"types":[]}}`], "", ErrNotFound},
			{"unknown ID", "alice", "999", "", ErrNotFound},
			{"junk ID", "alice", "abc", "", ErrNotFound},
			{"unknown user", "carol", "0", "", ErrNotFound},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				got, err := a.Filter(ctx, tc.user, tc.id)
				wantErr(t, "Filter", err, tc.wantErr)
				if err == nil && string(got) != tc.want {
					t.Fatalf("filter %s, want %s", got, tc.want)
				}
			})
		}
		_, err := a.PutFilter(ctx, "carol", json.RawMessage(`{}`))
		wantErr(t, "PutFilter unknown user", err, ErrNotFound)
	})
}

// TestTokensNotStoredInPlainText dumps every column of the devices table and
// checks that no token, nor its random part, appears.
func TestTokensNotStoredInPlainText(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		_, tok := mustDevice(t, a, "alice", NewDevice{Refreshable: true})
		tok2, err := a.Refresh(ctx, tok.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}

		rows, err := db.Reader().QueryContext(ctx, "SELECT * FROM accounts_devices")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		var dump strings.Builder
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			for _, v := range vals {
				if b, ok := v.([]byte); ok {
					v = string(b)
				}
				fmt.Fprintf(&dump, "%v|", v)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(dump.String(), hashToken(tok2.AccessToken)) {
			t.Fatalf("dump does not hold the token hash; is the dump working? %s", dump.String())
		}
		for _, token := range []string{tok.AccessToken, tok.RefreshToken, tok2.AccessToken, tok2.RefreshToken} {
			random := token[strings.Index(token, "_")+1:]
			if strings.Contains(dump.String(), random) {
				t.Fatalf("token %s stored in plain text", token)
			}
		}
	})
}

func TestCanceledContext(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := a.Account(ctx, "alice"); err == nil {
			t.Fatal("Account ignored a canceled context")
		}
		if _, err := a.CreateAccount(ctx, "bob", "pw", false, false); err == nil {
			t.Fatal("CreateAccount ignored a canceled context")
		}
	})
}
