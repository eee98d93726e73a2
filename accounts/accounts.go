package accounts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/plexus-chat/plexus/storage"
)

// Options tune the accounts component.
type Options struct {
	// BcryptCost is the bcrypt work factor; 0 means bcrypt.DefaultCost.
	BcryptCost int
	// AccessTokenLifetime is the lifetime of access tokens issued with a
	// refresh token; 0 means 5 minutes.
	AccessTokenLifetime time.Duration
}

const (
	defaultAccessTokenLifetime = 5 * time.Minute
	// lastSeenInterval is how often at most a token's last-seen data is
	// written, so a busy client does not cost a write per request.
	lastSeenInterval = time.Minute
	// maxLastSeen bounds the throttling map; it is simply emptied when full,
	// which at worst causes one extra write per active token.
	maxLastSeen = 100_000
	// bcryptMaxLen is how much of a password bcrypt looks at.
	bcryptMaxLen = 72

	accessTokenPrefix  = "plx_"
	refreshTokenPrefix = "plxr_"
	tokenBytes         = 32
	deviceIDLen        = 10
)

// Accounts implements API on top of the shared database.
type Accounts struct {
	db         *storage.DB
	bcryptCost int
	lifetime   time.Duration
	// dummyHash is checked against when the user does not exist.
	dummyHash []byte

	// sessions caches Authenticate's answers (sessioncache.go).
	sessions *sessionCache

	mu sync.Mutex
	// lastSeen maps an access token hash to when (ms) its device's last-seen
	// data was last written.
	lastSeen map[string]int64
}

var _ API = (*Accounts)(nil)

// New runs the component's migrations and returns it.
func New(ctx context.Context, db *storage.DB, opts Options) (*Accounts, error) {
	cost := opts.BcryptCost
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	if cost < bcrypt.MinCost || cost > bcrypt.MaxCost {
		return nil, fmt.Errorf("accounts: bcrypt cost %d out of range [%d, %d]", cost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	lifetime := opts.AccessTokenLifetime
	if lifetime <= 0 {
		lifetime = defaultAccessTokenLifetime
	}
	if err := db.Migrate(ctx, component, migrations); err != nil {
		return nil, err
	}
	if err := migrateLoginTokens(ctx, db); err != nil { // logintokens.go
		return nil, err
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte("no such user"), cost)
	if err != nil {
		return nil, err
	}
	return &Accounts{
		db:         db,
		bcryptCost: cost,
		lifetime:   lifetime,
		dummyHash:  dummy,
		lastSeen:   make(map[string]int64), sessions: newSessionCache(),
	}, nil
}

// normalise lower-cases a localpart: they are stored lower-cased so that
// names differing only in case are the same account.
func normalise(localpart string) string { return strings.ToLower(localpart) }

// bcryptInput returns the part of password that bcrypt uses. bcrypt ignores
// everything past 72 bytes, and x/crypto refuses to hash longer input; we
// truncate explicitly instead of rejecting, so long passwords still work
// (the HTTP layer limits their length).
func bcryptInput(password string) []byte {
	b := []byte(password)
	if len(b) > bcryptMaxLen {
		b = b[:bcryptMaxLen]
	}
	return b
}

func (a *Accounts) hashPassword(password string) (string, error) {
	if password == "" {
		return "", nil // no password login
	}
	h, err := bcrypt.GenerateFromPassword(bcryptInput(password), a.bcryptCost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// newToken returns a fresh random token with a recognisable prefix.
func newToken(prefix string) string {
	b := make([]byte, tokenBytes)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// hashToken is what is stored for a token: a leaked database then does not
// leak usable tokens. Tokens carry 256 bits of entropy, so a fast unsalted
// hash is enough.
func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// newDeviceID returns deviceIDLen random uppercase letters.
func newDeviceID() string {
	id := make([]byte, 0, deviceIDLen)
	var buf [16]byte
	for len(id) < deviceIDLen {
		_, _ = rand.Read(buf[:])
		for _, b := range buf {
			// Reject the top of the range so every letter is equally likely.
			if b < 26*9 && len(id) < deviceIDLen {
				id = append(id, 'A'+b%26)
			}
		}
	}
	return string(id)
}

func (a *Accounts) CreateAccount(ctx context.Context, localpart, password string, admin, guest bool) (*Account, error) {
	localpart = normalise(localpart)
	// Hash before the transaction: bcrypt is slow and must not hold the writer.
	hash, err := a.hashPassword(password)
	if err != nil {
		return nil, err
	}
	acc := &Account{Localpart: localpart, IsAdmin: admin, IsGuest: guest, CreatedTS: storage.NowMillis()}
	err = a.db.WithTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, sqlInsertUser, localpart, hash, admin, guest, acc.CreatedTS)
		if err != nil {
			if storage.IsUniqueViolation(err) {
				return ErrUserInUse
			}
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return ErrUserInUse
		}
		_, err = tx.ExecContext(ctx, sqlInsertProfile, localpart, localpart)
		return err
	})
	if err != nil {
		return nil, err
	}
	return acc, nil
}

func (a *Accounts) Account(ctx context.Context, localpart string) (*Account, error) {
	var acc Account
	err := a.db.Reader().QueryRowContext(ctx, sqlSelectAccount, normalise(localpart)).
		Scan(&acc.Localpart, &acc.IsAdmin, &acc.IsGuest, &acc.Deactivated, &acc.CreatedTS)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &acc, nil
}

func (a *Accounts) LocalpartAvailable(ctx context.Context, localpart string) (bool, error) {
	var n int
	if err := a.db.Reader().QueryRowContext(ctx, sqlCountUser, normalise(localpart)).Scan(&n); err != nil {
		return false, err
	}
	return n == 0, nil
}

func (a *Accounts) CheckPassword(ctx context.Context, localpart, password string) (*Account, error) {
	acc := Account{Localpart: normalise(localpart)}
	var hash string
	err := a.db.Reader().QueryRowContext(ctx, sqlSelectPassword, acc.Localpart).
		Scan(&hash, &acc.IsAdmin, &acc.IsGuest, &acc.Deactivated, &acc.CreatedTS)
	if errors.Is(err, sql.ErrNoRows) {
		// Spend the time a real check takes, so that response times do not
		// tell which accounts exist.
		_ = bcrypt.CompareHashAndPassword(a.dummyHash, bcryptInput(password))
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if hash == "" || password == "" ||
		bcrypt.CompareHashAndPassword([]byte(hash), bcryptInput(password)) != nil {
		return nil, ErrWrongPassword
	}
	// Only reveal deactivation to someone who knows the password.
	if acc.Deactivated {
		return nil, ErrDeactivated
	}
	return &acc, nil
}

func (a *Accounts) SetPassword(ctx context.Context, localpart, password string) error {
	hash, err := a.hashPassword(password)
	if err != nil {
		return err
	}
	res, err := a.db.Writer().ExecContext(ctx, sqlUpdatePassword, normalise(localpart), hash)
	return mustAffect(res, err)
}

func (a *Accounts) Deactivate(ctx context.Context, localpart string) error {
	localpart = normalise(localpart)
	defer a.sessions.invalidate()
	return a.db.WithTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, sqlDeactivateUser, localpart)
		if err := mustAffect(res, err); err != nil {
			return err
		}
		// Deleting the devices deletes their tokens, which are columns on them.
		if _, err := tx.ExecContext(ctx, sqlDeleteUserDevices, localpart); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, sqlDeleteProfile, localpart)
		return err
	})
}

// lockAccount checks inside tx that the account exists and is active; see
// sqlLockUser.
func lockAccount(ctx context.Context, tx *sql.Tx, localpart string) error {
	var deactivated bool
	err := tx.QueryRowContext(ctx, sqlLockUser, localpart).Scan(&deactivated)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if deactivated {
		return ErrDeactivated
	}
	return nil
}

// mustAffect turns an update that matched no row into ErrNotFound.
func mustAffect(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}
