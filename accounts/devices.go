package accounts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/plexus-chat/plexus/storage"
)

// issued is a fresh set of tokens together with what gets stored for them.
type issued struct {
	tokens      Tokens
	accessHash  string
	refreshHash sql.NullString // NULL when not refreshable
	expiresTS   int64          // 0 when the access token never expires
}

func (a *Accounts) issueTokens(refreshable bool, now int64) issued {
	var t issued
	t.tokens.AccessToken = newToken(accessTokenPrefix)
	t.accessHash = hashToken(t.tokens.AccessToken)
	if refreshable {
		t.tokens.RefreshToken = newToken(refreshTokenPrefix)
		t.refreshHash = sql.NullString{String: hashToken(t.tokens.RefreshToken), Valid: true}
		t.tokens.ExpiresIn = a.lifetime
		// Round up so that a sub-millisecond lifetime still expires.
		ms := (a.lifetime.Nanoseconds() + 999_999) / 1_000_000
		t.expiresTS = now + ms
	}
	return t
}

func (a *Accounts) CreateDevice(ctx context.Context, localpart string, nd NewDevice) (*Device, Tokens, error) {
	localpart = normalise(localpart)
	var dev *Device
	var tok issued
	defer a.sessions.invalidate() // the upsert revokes an existing device's token
	err := a.db.WithTx(ctx, func(tx *sql.Tx) error {
		if err := lockAccount(ctx, tx, localpart); err != nil {
			return err
		}
		now := storage.NowMillis()
		tok = a.issueTokens(nd.Refreshable, now)
		dev = &Device{Localpart: localpart, DeviceID: nd.DeviceID}
		args := func() []any {
			return []any{localpart, dev.DeviceID, nd.DisplayName, nd.IP, now, tok.accessHash, tok.expiresTS, tok.refreshHash}
		}
		if dev.DeviceID != "" {
			// Existing device: the upsert replaces (revokes) its tokens.
			return tx.QueryRowContext(ctx, sqlUpsertDevice, args()...).
				Scan(&dev.DisplayName, &dev.LastSeenIP, &dev.LastSeenTS)
		}
		// A generated ID must not take over an existing device of the user,
		// however unlikely the collision: retry on conflict.
		for range 5 {
			dev.DeviceID = newDeviceID()
			err := tx.QueryRowContext(ctx, sqlInsertDevice, args()...).
				Scan(&dev.DisplayName, &dev.LastSeenIP, &dev.LastSeenTS)
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		return errors.New("accounts: could not generate an unused device ID")
	})
	if err != nil {
		return nil, Tokens{}, err
	}
	// The login just recorded last-seen data; no need to write it again
	// on the token's first use.
	a.markSeen(tok.accessHash, storage.NowMillis())
	return dev, tok.tokens, nil
}

func (a *Accounts) Authenticate(ctx context.Context, accessToken, ip string) (*Session, error) {
	hash := hashToken(accessToken)
	now := storage.NowMillis()
	if s, ok := a.sessions.get(hash, now); ok {
		a.recordSeen(ctx, hash, ip, now)
		return &s, nil
	}
	gen := a.sessions.generation()
	var s Session
	var expiresTS int64
	var deactivated bool
	err := a.db.Reader().QueryRowContext(ctx, sqlAuthenticate, hash).
		Scan(&s.Localpart, &s.DeviceID, &expiresTS, &s.IsAdmin, &s.IsGuest, &deactivated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrUnknownToken
	}
	if err != nil {
		return nil, err
	}
	if deactivated {
		return nil, ErrUnknownToken
	}
	if expiresTS != 0 && now >= expiresTS {
		return nil, ErrTokenExpired
	}
	a.sessions.put(hash, s, expiresTS, gen, now)
	a.recordSeen(ctx, hash, ip, now)
	return &s, nil
}

// recordSeen writes the device's last-seen data when it is due.
func (a *Accounts) recordSeen(ctx context.Context, hash, ip string, now int64) {
	if a.shouldRecordSeen(hash, now) {
		// Last-seen data is informational: a failed write must not fail the
		// request. Forget the mark so the next request tries again.
		if _, err := a.db.Writer().ExecContext(ctx, sqlUpdateLastSeen, hash, ip, now); err != nil {
			a.mu.Lock()
			delete(a.lastSeen, hash)
			a.mu.Unlock()
		}
	}
}

// shouldRecordSeen reports whether the last-seen data for a token is due to
// be written, and if so marks it written at now.
func (a *Accounts) shouldRecordSeen(hash string, now int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if last, ok := a.lastSeen[hash]; ok && now-last < lastSeenInterval.Milliseconds() {
		return false
	}
	a.markSeenLocked(hash, now)
	return true
}

func (a *Accounts) markSeen(hash string, now int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.markSeenLocked(hash, now)
}

func (a *Accounts) markSeenLocked(hash string, now int64) {
	if len(a.lastSeen) >= maxLastSeen {
		// Entries of revoked tokens are never removed otherwise.
		clear(a.lastSeen)
	}
	a.lastSeen[hash] = now
}

func (a *Accounts) Refresh(ctx context.Context, refreshToken string) (Tokens, error) {
	tok := a.issueTokens(true, storage.NowMillis())
	// One UPDATE finds the device by its refresh token and replaces both
	// tokens atomically; of two concurrent refreshes with the same token
	// only one matches. Deactivation deletes devices, so a refresh token
	// of a deactivated account no longer matches anything.
	var localpart string
	defer a.sessions.invalidate()
	err := a.db.Writer().QueryRowContext(ctx, sqlRefresh,
		hashToken(refreshToken), tok.accessHash, tok.expiresTS, tok.refreshHash).Scan(&localpart)
	if errors.Is(err, sql.ErrNoRows) {
		return Tokens{}, ErrUnknownToken
	}
	if err != nil {
		return Tokens{}, err
	}
	return tok.tokens, nil
}

func (a *Accounts) Devices(ctx context.Context, localpart string) ([]Device, error) {
	rows, err := a.db.Reader().QueryContext(ctx, sqlSelectDevices, normalise(localpart))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var devs []Device
	for rows.Next() {
		var d Device
		if err := rows.Scan(&d.Localpart, &d.DeviceID, &d.DisplayName, &d.LastSeenIP, &d.LastSeenTS); err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}
	return devs, rows.Err()
}

func (a *Accounts) Device(ctx context.Context, localpart, deviceID string) (*Device, error) {
	var d Device
	err := a.db.Reader().QueryRowContext(ctx, sqlSelectDevice, normalise(localpart), deviceID).
		Scan(&d.Localpart, &d.DeviceID, &d.DisplayName, &d.LastSeenIP, &d.LastSeenTS)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &d, nil
}

func (a *Accounts) SetDeviceDisplayName(ctx context.Context, localpart, deviceID, name string) error {
	res, err := a.db.Writer().ExecContext(ctx, sqlUpdateDeviceName, normalise(localpart), deviceID, name)
	return mustAffect(res, err)
}

func (a *Accounts) DeleteDevices(ctx context.Context, localpart string, deviceIDs []string) error {
	localpart = normalise(localpart)
	defer a.sessions.invalidate()
	return a.db.WithTx(ctx, func(tx *sql.Tx) error {
		for _, id := range deviceIDs {
			if _, err := tx.ExecContext(ctx, sqlDeleteDevice, localpart, id); err != nil {
				return fmt.Errorf("delete device %s: %w", id, err)
			}
		}
		return nil
	})
}

func (a *Accounts) DeleteAllDevices(ctx context.Context, localpart, exceptDeviceID string) error {
	defer a.sessions.invalidate()
	_, err := a.db.Writer().ExecContext(ctx, sqlDeleteOtherDevices, normalise(localpart), exceptDeviceID)
	return err
}
