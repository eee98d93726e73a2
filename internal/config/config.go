// Package config holds Plexus's configuration: one YAML file, with a few
// settings that the environment can override for containers and tests.
package config

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"gopkg.in/yaml.v3"
)

// Config is the whole configuration. Relative paths are resolved against
// the data folder.
type Config struct {
	ServerName         string       `yaml:"server_name"`
	PublicBaseURL      string       `yaml:"public_baseurl"`
	Listen             Listen       `yaml:"listen"`
	Database           string       `yaml:"database"`
	SigningKey         string       `yaml:"signing_key"`
	Registration       Registration `yaml:"registration"`
	RateLimit          RateLimit    `yaml:"rate_limit"`
	Log                Log          `yaml:"log"`
	MaxRequestBodySize int64        `yaml:"max_request_body_size"`
	WellKnown          WellKnown    `yaml:"well_known"`
	Federation         Federation   `yaml:"federation"`
	Auth               Auth         `yaml:"auth"`
	Push               Push         `yaml:"push"`
	// DefaultRoomVersion is the version of rooms created without one.
	DefaultRoomVersion string `yaml:"default_room_version"`
	// UserDirectory configures POST /user_directory/search.
	UserDirectory UserDirectory `yaml:"user_directory"`
	// ServerNotices is the system user that sends notices to users.
	ServerNotices ServerNotices `yaml:"server_notices"`
	// Media is the content repository (media.go).
	Media Media `yaml:"media"`

	// DataDir is where the config was loaded for; not part of the file.
	DataDir string `yaml:"-"`
}

// Listen says where the servers listen.
type Listen struct {
	// HTTP serves the client and federation APIs in plain HTTP.
	HTTP string `yaml:"http"`
	// TLS, when set, serves the same APIs over TLS with TLSCert and TLSKey,
	// or, when both are empty, with a self-signed certificate for the
	// server name made in the data folder (see TLSCertificate).
	TLS     string `yaml:"tls"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
}

// Registration controls who may create accounts.
type Registration struct {
	Open         bool   `yaml:"open"`
	SharedSecret string `yaml:"shared_secret"`
	GuestAccess  bool   `yaml:"guest_access"`
	BcryptCost   int    `yaml:"bcrypt_cost"`
}

// RateLimit configures per-client request limits.
type RateLimit struct {
	Enabled           bool    `yaml:"enabled"`
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	Burst             int     `yaml:"burst"`
	// Login and registration attempts per client, per minute.
	AuthPerMinute float64 `yaml:"auth_per_minute"`
	AuthBurst     int     `yaml:"auth_burst"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// WellKnown is served at /.well-known/matrix/{client,server}.
type WellKnown struct {
	ClientBaseURL string `yaml:"client_base_url"`
	Server        string `yaml:"server"`
	// Support is served at /.well-known/matrix/support; empty serves 404.
	Support Support `yaml:"support"`
}

// Support names the people to contact about the server.
type Support struct {
	Contacts    []SupportContact `yaml:"contacts"`
	SupportPage string           `yaml:"support_page"`
}

// SupportContact is one contact: a role (m.role.admin, m.role.security,
// m.role.moderator) and a Matrix ID and/or an email address.
type SupportContact struct {
	Role         string `yaml:"role"`
	MatrixID     string `yaml:"matrix_id"`
	EmailAddress string `yaml:"email_address"`
}

// Federation configures server-to-server traffic.
type Federation struct {
	TrustedKeyServers []string `yaml:"trusted_key_servers"`
	// CAFile is a PEM file of extra certificate authorities trusted for
	// outbound TLS (federation, push, application services).
	CAFile string `yaml:"ca_file"`
	// InsecureSkipVerify accepts any certificate from peers. Tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// KeyValidity is how long other servers may use our published signing
	// keys before fetching them again (valid_until_ts = now + KeyValidity).
	KeyValidity Duration `yaml:"key_validity"`
	// OldSigningKeys are keys this server signed with before, published as
	// old_verify_keys so that events they signed still verify.
	OldSigningKeys []OldSigningKey `yaml:"old_signing_keys"`
}

// OldSigningKey is a retired signing key: its public half and when it
// stopped being used.
type OldSigningKey struct {
	// KeyID is "ed25519:<version>".
	KeyID string `yaml:"key_id"`
	// PublicKey is the unpadded base64 ed25519 public key.
	PublicKey string `yaml:"public_key"`
	// ExpiredTS is when the key stopped being used, in milliseconds since
	// the Unix epoch.
	ExpiredTS int64 `yaml:"expired_ts"`
}

// Push configures delivery of notifications to push gateways (outbound
// TLS trusts federation.ca_file too).
type Push struct {
	// RetryFor is how long a notification a gateway fails to take is
	// retried, with exponential backoff, before it is given up.
	RetryFor Duration `yaml:"retry_for"`
}

// Auth configures tokens.
type Auth struct {
	// AccessTokenLifetime applies to access tokens issued with a refresh
	// token; others never expire.
	AccessTokenLifetime Duration `yaml:"access_token_lifetime"`
}

// UserDirectory configures who the user directory shows.
type UserDirectory struct {
	// SearchAllUsers shows every local user to every searcher. When false
	// (the default), a searcher sees only users who share a room with
	// them or are joined to a public or world-readable room.
	SearchAllUsers bool `yaml:"search_all_users"`
}

// ServerNotices configures the user that sends server notices
// (clientapi/servernotices.go) and the room they arrive in.
type ServerNotices struct {
	// SystemUserLocalpart is the sender's localpart (@<it>:<server_name>).
	SystemUserLocalpart   string `yaml:"system_user_localpart"`
	SystemUserDisplayName string `yaml:"system_user_display_name"`
	RoomName              string `yaml:"room_name"`
}

// Duration is a time.Duration written as "5m", "1h30m" in YAML.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 5m or 1h", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Default returns the configuration for a server named serverName.
func Default(serverName string) Config {
	host := serverName
	if h, _, err := net.SplitHostPort(serverName); err == nil {
		host = h
	}
	local := host == "localhost" || host == "127.0.0.1" || host == "::1"
	return Config{
		ServerName: serverName,
		Listen:     Listen{HTTP: "localhost:8008"},
		Database:   "plexus.db",
		SigningKey: "signing.key",
		Registration: Registration{
			// Open registration and guests are harmless on a server only
			// this machine reaches.
			Open:        local,
			GuestAccess: local,
			BcryptCost:  12,
		},
		RateLimit: RateLimit{
			Enabled:           true,
			RequestsPerSecond: 10,
			Burst:             50,
			AuthPerMinute:     10,
			AuthBurst:         10,
		},
		Log:                Log{Level: "info", Format: "text"},
		MaxRequestBodySize: 10 << 20,
		Federation: Federation{
			TrustedKeyServers: []string{"matrix.org"},
			KeyValidity:       Duration(7 * 24 * time.Hour),
		},
		Auth: Auth{AccessTokenLifetime: Duration(5 * time.Minute)},
		Push: Push{RetryFor: Duration(time.Hour)},
		// The spec's recommended version.
		DefaultRoomVersion: "12",
		ServerNotices: ServerNotices{SystemUserLocalpart: "_server", SystemUserDisplayName: "Server Notices",
			RoomName: "Server Notices"},
		Media: defaultMedia(),
	}
}

// Load reads the config file at path, applies environment overrides,
// resolves relative paths against dataDir and validates the result.
func Load(path, dataDir string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.ApplyEnv(os.LookupEnv); err != nil {
		return nil, err
	}
	cfg.DataDir = dataDir
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes YAML over the defaults. Unknown fields are errors, so a
// typo does not silently fall back to a default.
func Parse(raw []byte) (*Config, error) {
	cfg := Default("localhost:8008")
	cfg.Registration.Open = false
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	// An empty file is all defaults.
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return &cfg, nil
}

// EnvVars documents the environment variables that override the file.
var EnvVars = []struct{ Name, Field string }{
	{"PLEXUS_SERVER_NAME", "server_name"},
	{"PLEXUS_LISTEN", "listen.http"},
	{"PLEXUS_TLS_LISTEN", "listen.tls"},
	{"PLEXUS_TLS_CERT", "listen.tls_cert"},
	{"PLEXUS_TLS_KEY", "listen.tls_key"},
	{"PLEXUS_DATABASE", "database"},
	{"PLEXUS_REGISTRATION_OPEN", "registration.open (true/false)"},
	{"PLEXUS_REGISTRATION_SHARED_SECRET", "registration.shared_secret"},
	{"PLEXUS_GUEST_ACCESS", "registration.guest_access (true/false)"},
	{"PLEXUS_RATE_LIMIT", "rate_limit.enabled (off/false disables, on/true enables)"},
	{"PLEXUS_LOG_LEVEL", "log.level"},
	{"PLEXUS_DEFAULT_ROOM_VERSION", "default_room_version"},
	{"PLEXUS_FEDERATION_CA", "federation.ca_file"},
	{"PLEXUS_FEDERATION_INSECURE", "federation.insecure_skip_verify (true/false)"},
	{"PLEXUS_TRUSTED_KEY_SERVERS", "federation.trusted_key_servers (comma-separated; empty for none)"},
	{"PLEXUS_BCRYPT_COST", "registration.bcrypt_cost"},
}

// ApplyEnv overrides settings from the environment; lookup is os.LookupEnv
// outside tests.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	str := func(name string, dst *string) {
		if v, ok := lookup(name); ok {
			*dst = v
		}
	}
	boolean := func(name string, dst *bool) error {
		v, ok := lookup(name)
		if !ok {
			return nil
		}
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "1", "true", "yes", "on":
			*dst = true
		case "0", "false", "no", "off":
			*dst = false
		default:
			return fmt.Errorf("environment %s=%q: want true or false", name, v)
		}
		return nil
	}
	str("PLEXUS_SERVER_NAME", &c.ServerName)
	str("PLEXUS_LISTEN", &c.Listen.HTTP)
	str("PLEXUS_TLS_LISTEN", &c.Listen.TLS)
	str("PLEXUS_TLS_CERT", &c.Listen.TLSCert)
	str("PLEXUS_TLS_KEY", &c.Listen.TLSKey)
	str("PLEXUS_DATABASE", &c.Database)
	str("PLEXUS_REGISTRATION_SHARED_SECRET", &c.Registration.SharedSecret)
	str("PLEXUS_LOG_LEVEL", &c.Log.Level)
	str("PLEXUS_DEFAULT_ROOM_VERSION", &c.DefaultRoomVersion)
	str("PLEXUS_FEDERATION_CA", &c.Federation.CAFile)
	if v, ok := lookup("PLEXUS_TRUSTED_KEY_SERVERS"); ok {
		c.Federation.TrustedKeyServers = nil
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				c.Federation.TrustedKeyServers = append(c.Federation.TrustedKeyServers, name)
			}
		}
	}
	for name, dst := range map[string]*bool{
		"PLEXUS_REGISTRATION_OPEN":   &c.Registration.Open,
		"PLEXUS_GUEST_ACCESS":        &c.Registration.GuestAccess,
		"PLEXUS_RATE_LIMIT":          &c.RateLimit.Enabled,
		"PLEXUS_FEDERATION_INSECURE": &c.Federation.InsecureSkipVerify,
	} {
		if err := boolean(name, dst); err != nil {
			return err
		}
	}
	if v, ok := lookup("PLEXUS_BCRYPT_COST"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("environment PLEXUS_BCRYPT_COST=%q: want a number", v)
		}
		c.Registration.BcryptCost = n
	}
	return nil
}

// Validate checks every field and names the first bad one.
func (c *Config) Validate() error {
	if err := ValidateServerName(c.ServerName); err != nil {
		return fmt.Errorf("server_name: %w", err)
	}
	if c.Listen.HTTP == "" && c.Listen.TLS == "" {
		return errors.New("listen: set listen.http or listen.tls")
	}
	for field, addr := range map[string]string{"listen.http": c.Listen.HTTP, "listen.tls": c.Listen.TLS} {
		if addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return fmt.Errorf("%s: %q is not host:port", field, addr)
		}
	}
	if (c.Listen.TLSCert == "") != (c.Listen.TLSKey == "") {
		return errors.New("listen.tls_cert and listen.tls_key: set both, or neither for a self-signed certificate")
	}
	if c.ServerNotices.SystemUserLocalpart == "" || strings.ContainsAny(c.ServerNotices.SystemUserLocalpart, ":@ ") {
		return errors.New("server_notices.system_user_localpart: set a localpart (no @, : or spaces)")
	}
	for i, contact := range c.WellKnown.Support.Contacts {
		if contact.Role == "" || (contact.MatrixID == "" && contact.EmailAddress == "") {
			return fmt.Errorf("well_known.support.contacts[%d]: set a role and a matrix_id or email_address", i)
		}
	}
	if c.Database == "" {
		return errors.New("database: set an SQLite file path or a postgres:// URL")
	}
	if c.SigningKey == "" {
		return errors.New("signing_key: set a file path")
	}
	if cost := c.Registration.BcryptCost; cost < 4 || cost > 31 {
		return fmt.Errorf("registration.bcrypt_cost: %d is outside 4..31", cost)
	}
	if c.RateLimit.Enabled {
		if c.RateLimit.RequestsPerSecond <= 0 || c.RateLimit.Burst <= 0 {
			return errors.New("rate_limit.requests_per_second and rate_limit.burst: must be positive when rate_limit.enabled")
		}
		if c.RateLimit.AuthPerMinute <= 0 || c.RateLimit.AuthBurst <= 0 {
			return errors.New("rate_limit.auth_per_minute and rate_limit.auth_burst: must be positive when rate_limit.enabled")
		}
	}
	switch strings.ToLower(c.Log.Level) {
	case "trace", "debug", "info", "warn", "warning", "error":
	default:
		return fmt.Errorf("log.level: %q is not one of trace, debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("log.format: %q is not text or json", c.Log.Format)
	}
	if c.MaxRequestBodySize < 1024 {
		return fmt.Errorf("max_request_body_size: %d bytes is too small (minimum 1024)", c.MaxRequestBodySize)
	}
	if v, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(c.DefaultRoomVersion)); err != nil || !v.Stable() {
		return fmt.Errorf("default_room_version: %q is not a stable room version", c.DefaultRoomVersion)
	}
	if c.Auth.AccessTokenLifetime < Duration(time.Second) {
		return errors.New("auth.access_token_lifetime: must be at least 1s")
	}
	if err := c.validateMedia(); err != nil {
		return err
	}
	if c.Push.RetryFor < Duration(time.Second) {
		return errors.New("push.retry_for: must be at least 1s")
	}
	return c.validateFederation()
}

func (c *Config) validateFederation() error {
	for _, name := range c.Federation.TrustedKeyServers {
		if err := ValidateServerName(name); err != nil {
			return fmt.Errorf("federation.trusted_key_servers: %w", err)
		}
		if name == c.ServerName {
			return fmt.Errorf("federation.trusted_key_servers: %q is this server", name)
		}
	}
	if c.Federation.KeyValidity < Duration(time.Hour) {
		return fmt.Errorf("federation.key_validity: %s is too short (minimum 1h)", c.Federation.KeyValidity)
	}
	seen := map[string]bool{}
	for i, k := range c.Federation.OldSigningKeys {
		field := fmt.Sprintf("federation.old_signing_keys[%d]", i)
		version, ok := strings.CutPrefix(k.KeyID, "ed25519:")
		if !ok || version == "" || strings.IndexFunc(version, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_')
		}) >= 0 {
			return fmt.Errorf("%s.key_id: %q is not ed25519:<letters, digits, _>", field, k.KeyID)
		}
		if seen[k.KeyID] {
			return fmt.Errorf("%s.key_id: %q is listed twice", field, k.KeyID)
		}
		seen[k.KeyID] = true
		if _, err := DecodePublicKey(k.PublicKey); err != nil {
			return fmt.Errorf("%s.public_key: %w", field, err)
		}
		if k.ExpiredTS <= 0 {
			return fmt.Errorf("%s.expired_ts: set when the key stopped being used, in ms since the epoch", field)
		}
	}
	return nil
}

// DecodePublicKey decodes an ed25519 public key written in unpadded (or
// padded) base64.
func DecodePublicKey(s string) (ed25519.PublicKey, error) {
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("not a 32-byte ed25519 key in base64")
	}
	return ed25519.PublicKey(raw), nil
}

// ValidateServerName checks the server name grammar: a hostname, IPv4
// literal or bracketed IPv6 literal, with an optional port.
func ValidateServerName(name string) error {
	if name == "" {
		return errors.New("empty")
	}
	if len(name) > 230 {
		return errors.New("longer than 230 characters")
	}
	host, port := name, ""
	if strings.HasPrefix(name, "[") {
		end := strings.Index(name, "]")
		if end < 0 {
			return fmt.Errorf("%q: unclosed IPv6 literal", name)
		}
		host = name[1:end]
		if net.ParseIP(host) == nil || !strings.Contains(host, ":") {
			return fmt.Errorf("%q: bad IPv6 literal", name)
		}
		rest := name[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return fmt.Errorf("%q: junk after IPv6 literal", name)
			}
			port = rest[1:]
			if port == "" {
				return fmt.Errorf("%q: empty port", name)
			}
		}
	} else if i := strings.LastIndex(name, ":"); i >= 0 {
		host, port = name[:i], name[i+1:]
		if port == "" {
			return fmt.Errorf("%q: empty port", name)
		}
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || len(port) > 5 {
			return fmt.Errorf("%q: bad port", name)
		}
	}
	if strings.HasPrefix(name, "[") {
		return nil
	}
	if host == "" {
		return fmt.Errorf("%q: empty host", name)
	}
	for _, r := range host {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.'
		if !ok {
			return fmt.Errorf("%q: %q is not allowed in a hostname", name, r)
		}
	}
	return nil
}

// Path resolves p against the data folder unless it is absolute.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.DataDir, p)
}

// DatabaseConn is the connection string to open: a postgres URL as is, or
// the SQLite path resolved against the data folder.
func (c *Config) DatabaseConn() string {
	if strings.HasPrefix(c.Database, "postgres://") || strings.HasPrefix(c.Database, "postgresql://") {
		return c.Database
	}
	return c.Path(c.Database)
}
