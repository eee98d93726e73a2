package config

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
)

// Generate renders cfg as a commented YAML file: every option with a line
// saying what it does, and the environment variables that override them.
func Generate(cfg Config) ([]byte, error) {
	var env strings.Builder
	for _, v := range EnvVars {
		fmt.Fprintf(&env, "#   %-34s %s\n", v.Name, v.Field)
	}
	var buf bytes.Buffer
	err := configTemplate.Execute(&buf, struct {
		Config
		Env string
	}{cfg, env.String()})
	return buf.Bytes(), err
}

var configTemplate = template.Must(template.New("config").Funcs(template.FuncMap{
	"q": func(s string) string { return fmt.Sprintf("%q", s) },
}).Parse(`# Plexus configuration. Relative paths are resolved against the data folder.
# These environment variables override the settings below:
{{.Env}}
# The name of this server: the part after the colon in user IDs (@alice:example.org).
# It cannot be changed once users exist.
server_name: {{q .ServerName}}
# The URL clients use to reach this server, if not https://<server_name> (used in well-known).
public_baseurl: {{q .PublicBaseURL}}

listen:
  # Address for the client and federation APIs over plain HTTP (put a TLS proxy in front).
  http: {{q .Listen.HTTP}}
  # Optional address serving the same APIs over TLS (federation uses port 8448), with the certificate and key below.
  tls: {{q .Listen.TLS}}
  # PEM certificate chain for the TLS listener. With tls_cert and tls_key both empty, a
  # self-signed certificate for server_name is made in the data folder (tls-selfsigned.crt)
  # and reused; other servers accept it only if they skip verification.
  tls_cert: {{q .Listen.TLSCert}}
  # PEM private key for the TLS listener.
  tls_key: {{q .Listen.TLSKey}}

# The database: a path to an SQLite file, or a postgres://user:pass@host/db URL.
database: {{q .Database}}

# The ed25519 key this server signs events and requests with (made if missing).
signing_key: {{q .SigningKey}}

registration:
  # Anyone may register with the m.login.dummy flow. Keep off on public servers.
  open: {{.Registration.Open}}
  # Secret for the shared-secret admin registration API (/_synapse/admin/v1/register); empty disables it.
  shared_secret: {{q .Registration.SharedSecret}}
  # Allow guest accounts (register?kind=guest).
  guest_access: {{.Registration.GuestAccess}}
  # bcrypt cost for password hashes (4..31; each step doubles the work).
  bcrypt_cost: {{.Registration.BcryptCost}}

rate_limit:
  # Limit requests per client (user, or IP address without a login). Set false for tests only.
  enabled: {{.RateLimit.Enabled}}
  # Sustained requests per second per client.
  requests_per_second: {{.RateLimit.RequestsPerSecond}}
  # Requests a client may make in a burst above the sustained rate.
  burst: {{.RateLimit.Burst}}
  # Login and registration attempts per minute per IP address.
  auth_per_minute: {{.RateLimit.AuthPerMinute}}
  # Login and registration attempts allowed in a burst.
  auth_burst: {{.RateLimit.AuthBurst}}

log:
  # One of trace, debug, info, warn, error.
  level: {{q .Log.Level}}
  # text for people, json for log collectors.
  format: {{q .Log.Format}}

# Largest request body accepted, in bytes (larger requests get M_TOO_LARGE).
max_request_body_size: {{.MaxRequestBodySize}}

well_known:
  # Served as m.homeserver.base_url at /.well-known/matrix/client; empty serves nothing there.
  client_base_url: {{q .WellKnown.ClientBaseURL}}
  # Served as m.server at /.well-known/matrix/server (host:port for federation); empty serves nothing there.
  server: {{q .WellKnown.Server}}
  # Served at /.well-known/matrix/support; with neither contacts nor a page, that answers 404.
  support:
    # - role: "m.role.admin"          # or m.role.security, m.role.moderator
    #   matrix_id: "@admin:example.org" # and/or email_address
    contacts:{{range .WellKnown.Support.Contacts}}
      - role: {{q .Role}}
        matrix_id: {{q .MatrixID}}
        email_address: {{q .EmailAddress}}{{else}} []{{end}}
    support_page: {{q .WellKnown.Support.SupportPage}}

federation:
  # Notary servers asked for other servers' signing keys when the servers cannot be reached
  # directly. Their own keys are fetched from them directly over verified TLS.
  trusted_key_servers:{{range .Federation.TrustedKeyServers}}
    - {{q .}}{{else}} []{{end}}
  # Extra PEM certificate authorities trusted for outbound TLS.
  ca_file: {{q .Federation.CAFile}}
  # Accept any TLS certificate from other servers. For test deployments only.
  insecure_skip_verify: {{.Federation.InsecureSkipVerify}}
  # How long other servers may use our published signing keys before asking again (at least 1h).
  key_validity: {{q .Federation.KeyValidity.String}}
  # Keys this server used to sign with, still published so that old events verify:
  #   - key_id: "ed25519:old"
  #     public_key: "<unpadded base64 public key>"
  #     expired_ts: 1700000000000   # when it stopped being used, ms since the epoch
  old_signing_keys:{{range .Federation.OldSigningKeys}}
    - key_id: {{q .KeyID}}
      public_key: {{q .PublicKey}}
      expired_ts: {{.ExpiredTS}}{{else}} []{{end}}

# Version of rooms created without one: 12 is the spec's recommendation;
# 10 or 11 for rooms that servers without version 12 (Dendrite 0.13) must join.
default_room_version: {{q .DefaultRoomVersion}}

server_notices:
  # The user that sends server notices (@<localpart>:<server_name>), made on first use.
  system_user_localpart: {{q .ServerNotices.SystemUserLocalpart}}
  system_user_display_name: {{q .ServerNotices.SystemUserDisplayName}}
  # Name of the room each user receives notices in.
  room_name: {{q .ServerNotices.RoomName}}

auth:
  # Lifetime of access tokens issued together with a refresh token.
  access_token_lifetime: {{q .Auth.AccessTokenLifetime.String}}

user_directory:
  # Let every user find every local user. When false, the directory shows only users who
  # share a room with the searcher or are joined to a public or world-readable room.
  search_all_users: {{.UserDirectory.SearchAllUsers}}

media:
  # Folder of uploaded files, cached remote files and thumbnails.
  storage_path: {{q .Media.StoragePath}}
  # Largest upload accepted (and remote file fetched), in bytes.
  max_upload_size: {{.Media.MaxUploadSize}}
  # Largest image (width x height pixels) thumbnailed; larger ones get M_TOO_LARGE.
  max_image_pixels: {{.Media.MaxImagePixels}}
  # Created (POST /media/v1/create) but not yet uploaded media IDs a user may hold.
  max_pending_uploads: {{.Media.MaxPendingUploads}}
  # How long a created media ID waits for its content.
  pending_upload_lifetime: {{q .Media.PendingUploadLifetime.String}}
  # Uploads per user per minute, and the burst above it (when rate_limit.enabled).
  uploads_per_minute: {{.Media.UploadsPerMinute}}
  upload_burst: {{.Media.UploadBurst}}
  # Thumbnails made on upload; requests are served from the nearest size not smaller.
  thumbnail_sizes:{{range .Media.ThumbnailSizes}}
    - {width: {{.Width}}, height: {{.Height}}, method: {{q .Method}}}{{else}} []{{end}}
  url_preview:
    # Let users ask this server to fetch web pages for link previews.
    enabled: {{.Media.URLPreview.Enabled}}
    # CIDR ranges never fetched from, besides loopback, private, link-local and multicast.
    blocked_ip_ranges:{{range .Media.URLPreview.BlockedIPRanges}}
      - {{q .}}{{else}} []{{end}}
    # Most bytes of a page read.
    max_page_size: {{.Media.URLPreview.MaxPageSize}}

push:
  # How long a notification that a push gateway fails to take is retried (with backoff) before it
  # is dropped. Gateways' certificates are checked against the system's CAs and federation.ca_file.
  retry_for: {{q .Push.RetryFor.String}}
`))
