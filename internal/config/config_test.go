package config

import (
	"strings"
	"testing"
	"time"
)

func TestGeneratedConfigRoundTrips(t *testing.T) {
	want := Default("example.org")
	want.Registration.SharedSecret = `se"cret`
	want.Federation.TrustedKeyServers = []string{"matrix.org", "example.com"}
	want.Federation.OldSigningKeys = []OldSigningKey{{KeyID: "ed25519:old", PublicKey: testPub, ExpiredTS: 1700000000000}}
	raw, err := Generate(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(raw)
	if err != nil {
		t.Fatalf("parse generated config: %v\n%s", err, raw)
	}
	if got.ServerName != want.ServerName || got.Registration != want.Registration ||
		got.RateLimit != want.RateLimit || got.Auth != want.Auth || got.Listen != want.Listen ||
		strings.Join(got.Federation.TrustedKeyServers, ",") != "matrix.org,example.com" ||
		got.Federation.KeyValidity != want.Federation.KeyValidity ||
		len(got.Federation.OldSigningKeys) != 1 || got.Federation.OldSigningKeys[0] != want.Federation.OldSigningKeys[0] {
		t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", *got, want)
	}
	for _, v := range EnvVars {
		if !strings.Contains(string(raw), v.Name) {
			t.Errorf("generated config does not document %s", v.Name)
		}
	}
	if !Default("localhost:8008").Registration.Open || Default("example.org").Registration.Open {
		t.Error("open registration should default on only for localhost")
	}
}

// testPub is an ed25519 public key in unpadded base64.
const testPub = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"

func TestParseRejectsUnknownFieldsAndBadValues(t *testing.T) {
	cases := []struct{ yaml, wantErr string }{
		{"server_nmae: x\n", "server_nmae"},
		{"auth:\n  access_token_lifetime: soon\n", "duration"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("Parse(%q) error = %v, want mention of %q", c.yaml, err, c.wantErr)
		}
	}
	if _, err := Parse(nil); err != nil {
		t.Errorf("empty file: %v", err)
	}
}

func TestValidateNamesTheBadField(t *testing.T) {
	cases := []struct {
		edit  func(*Config)
		field string
	}{
		{func(c *Config) { c.ServerName = "bad name" }, "server_name"},
		{func(c *Config) { c.ServerName = "example.org:99999" }, "server_name"},
		{func(c *Config) { c.Listen.HTTP = "nope" }, "listen.http"},
		{func(c *Config) { c.Listen.HTTP = ""; c.Listen.TLS = "" }, "listen"},
		{func(c *Config) { c.Listen.TLS = ":8448"; c.Listen.TLSCert = "tls.crt" }, "tls_key"},
		{func(c *Config) { c.Federation.TrustedKeyServers = []string{"bad name"} }, "trusted_key_servers"},
		{func(c *Config) { c.Federation.TrustedKeyServers = []string{"example.org"} }, "trusted_key_servers"},
		{func(c *Config) { c.Federation.KeyValidity = Duration(time.Minute) }, "key_validity"},
		{func(c *Config) {
			c.Federation.OldSigningKeys = []OldSigningKey{{KeyID: "rsa:1", PublicKey: testPub, ExpiredTS: 1}}
		}, "key_id"},
		{func(c *Config) {
			c.Federation.OldSigningKeys = []OldSigningKey{{KeyID: "ed25519:a", PublicKey: testPub, ExpiredTS: 1}, {KeyID: "ed25519:a", PublicKey: testPub, ExpiredTS: 1}}
		}, "twice"},
		{func(c *Config) {
			c.Federation.OldSigningKeys = []OldSigningKey{{KeyID: "ed25519:a", PublicKey: "c2hvcnQ", ExpiredTS: 1}}
		}, "public_key"},
		{func(c *Config) {
			c.Federation.OldSigningKeys = []OldSigningKey{{KeyID: "ed25519:a", PublicKey: testPub}}
		}, "expired_ts"},
		{func(c *Config) { c.Database = "" }, "database"},
		{func(c *Config) { c.Registration.BcryptCost = 2 }, "bcrypt_cost"},
		{func(c *Config) { c.RateLimit.Burst = 0 }, "rate_limit"},
		{func(c *Config) { c.Log.Level = "loud" }, "log.level"},
		{func(c *Config) { c.Log.Format = "xml" }, "log.format"},
		{func(c *Config) { c.MaxRequestBodySize = 10 }, "max_request_body_size"},
		{func(c *Config) { c.Auth.AccessTokenLifetime = 0 }, "access_token_lifetime"},
		{func(c *Config) { c.DefaultRoomVersion = "99" }, "default_room_version"},
	}
	for _, c := range cases {
		cfg := Default("example.org")
		c.edit(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("error = %v, want one naming %s", err, c.field)
		}
	}
	ok := Default("example.org")
	ok.Listen.TLS = ":8448" // without a certificate: a self-signed one
	ok.Federation.OldSigningKeys = []OldSigningKey{{KeyID: "ed25519:old_1", PublicKey: testPub, ExpiredTS: 1}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	ok.RateLimit = RateLimit{Enabled: false}
	if err := ok.Validate(); err != nil {
		t.Fatalf("rate limits off with zero values: %v", err)
	}
}

func TestServerNames(t *testing.T) {
	for _, good := range []string{"localhost", "localhost:8008", "example.org", "1.2.3.4:8448", "[::1]", "[1234:5678::abcd]:8448", "a-b.c"} {
		if err := ValidateServerName(good); err != nil {
			t.Errorf("%q rejected: %v", good, err)
		}
	}
	for _, bad := range []string{"", "exa mple.org", "example.org:", "example.org:0", "example.org:x", "[::1", "[::1]x", "ex_ample.org", "@x", ":80"} {
		if err := ValidateServerName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEnvOverrides(t *testing.T) {
	cfg := Default("localhost:8008")
	env := map[string]string{
		"PLEXUS_SERVER_NAME":                "hs.test:8448",
		"PLEXUS_LISTEN":                     "127.0.0.1:9000",
		"PLEXUS_DATABASE":                   "postgres://x@y/z",
		"PLEXUS_REGISTRATION_OPEN":          "false",
		"PLEXUS_REGISTRATION_SHARED_SECRET": "s3",
		"PLEXUS_RATE_LIMIT":                 "off",
		"PLEXUS_LOG_LEVEL":                  "debug",
		"PLEXUS_FEDERATION_INSECURE":        "true",
		"PLEXUS_FEDERATION_CA":              "/ca.crt",
		"PLEXUS_TRUSTED_KEY_SERVERS":        " a.example , b.example:8448,",
		"PLEXUS_TLS_LISTEN":                 ":8448",
		"PLEXUS_BCRYPT_COST":                "4",
		"PLEXUS_GUEST_ACCESS":               "false",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := cfg.ApplyEnv(lookup); err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "hs.test:8448" || cfg.Listen.HTTP != "127.0.0.1:9000" || cfg.DatabaseConn() != "postgres://x@y/z" ||
		cfg.Registration.Open || cfg.Registration.SharedSecret != "s3" || cfg.RateLimit.Enabled ||
		cfg.Log.Level != "debug" || !cfg.Federation.InsecureSkipVerify || cfg.Registration.BcryptCost != 4 ||
		cfg.Registration.GuestAccess {
		t.Fatalf("overrides not applied: %+v", cfg)
	}
	if cfg.Federation.CAFile != "/ca.crt" || cfg.Listen.TLS != ":8448" ||
		strings.Join(cfg.Federation.TrustedKeyServers, ",") != "a.example,b.example:8448" {
		t.Fatalf("federation overrides not applied: %+v", cfg.Federation)
	}
	env = map[string]string{"PLEXUS_TRUSTED_KEY_SERVERS": ""}
	if err := cfg.ApplyEnv(lookup); err != nil || len(cfg.Federation.TrustedKeyServers) != 0 {
		t.Fatalf("empty PLEXUS_TRUSTED_KEY_SERVERS: %v %v", err, cfg.Federation.TrustedKeyServers)
	}
	env = map[string]string{"PLEXUS_RATE_LIMIT": "maybe"}
	if err := cfg.ApplyEnv(lookup); err == nil || !strings.Contains(err.Error(), "PLEXUS_RATE_LIMIT") {
		t.Fatalf("bad boolean: err = %v", err)
	}
	cfg.DataDir = "/data"
	cfg.Database = "plexus.db"
	if cfg.DatabaseConn() != "/data/plexus.db" {
		t.Fatalf("relative database path: %s", cfg.DatabaseConn())
	}
	_ = time.Second
}
