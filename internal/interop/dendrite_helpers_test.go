package interop

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// dendrite is a Dendrite process run as a black box: a config written
// here, SQLite in a temporary folder, federation over TLS with a
// certificate from the test CA, and that CA trusted through SSL_CERT_FILE
// (Go's crypto/x509 reads it on Linux), so TLS verification stays on.
type dendrite struct {
	*homeserver
	dir, logFile, bin string
	args              []string
	ca                *testserver.CA
	// The running process; exited closes when it ends.
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
}

// freePort finds a loopback port nobody listens on (the kernel's choice,
// closed again: another process could take it before Dendrite does, which
// the start then reports).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// writeMatrixKey writes an ed25519 signing key in the PEM form Dendrite
// (and Synapse) read: the 32-byte seed, with its key ID as a header.
func writeMatrixKey(t *testing.T, path string) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.NewReplacer("+", "", "/", "", "=", "").Replace(base64.StdEncoding.EncodeToString(priv.Seed()[:6]))
	keyID := "ed25519:" + id
	block := &pem.Block{Type: "MATRIX PRIVATE KEY", Headers: map[string]string{"Key-ID": keyID}, Bytes: priv.Seed()}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return keyID
}

// dendriteConfig is a complete Dendrite v0.13 config for one test:
// SQLite files in dir, open registration, no rate limits, no notaries
// (keys are fetched from each server directly), TLS validation on.
func dendriteConfig(dir, serverName, keyID string, skipTLSVerify bool, logLevel string) string {
	db := func(name string) string { return "file:" + filepath.Join(dir, "dendrite_"+name+".db") }
	return fmt.Sprintf(`version: 2
global:
  server_name: %q
  key_id: %q
  private_key: %q
  old_private_keys: []
  key_validity_period: 168h0m0s
  database:
    connection_string: ""
  well_known_server_name: ""
  well_known_client_name: ""
  disable_federation: false
  presence:
    enable_inbound: false
    enable_outbound: false
  trusted_third_party_id_servers: []
  jetstream:
    storage_path: %q
    addresses: []
    topic_prefix: Dendrite
    in_memory: false
  metrics:
    enabled: false
  dns_cache:
    enabled: false
  server_notices:
    enabled: false
    local_part: _server
    display_name: Server Alert
    avatar_url: ""
    room_name: Server Alert
  report_stats:
    enabled: false
app_service_api:
  config_files: []
client_api:
  registration_disabled: false
  registration_requires_token: false
  guests_disabled: true
  enable_registration_captcha: false
  rate_limiting:
    enabled: false
    threshold: 5
    cooloff_ms: 500
federation_api:
  database:
    connection_string: %q
  send_max_retries: 16
  enable_relays: false
  disable_tls_validation: %t
  disable_http_keepalives: false
  key_perspectives: []
  prefer_direct_fetch: true
key_server:
  database:
    connection_string: %q
media_api:
  database:
    connection_string: %q
  base_path: %q
  max_file_size_bytes: 10485760
  dynamic_thumbnails: false
room_server:
  database:
    connection_string: %q
sync_api:
  database:
    connection_string: %q
  search:
    enabled: false
user_api:
  bcrypt_cost: 4
  account_database:
    connection_string: %q
relay_api:
  database:
    connection_string: %q
mscs:
  mscs: []
  database:
    connection_string: %q
tracing:
  enabled: false
logging:
- type: std
  level: %s
`, serverName, keyID, filepath.Join(dir, "matrix_key.pem"), filepath.Join(dir, "jetstream"),
		db("federationapi"), skipTLSVerify, db("keyserver"), db("mediaapi"), filepath.Join(dir, "media"),
		db("roomserver"), db("syncapi"), db("userapi"), db("relayapi"), db("mscs"), logLevel)
}

// startDendrite runs bin named "127.0.0.1:<its TLS port>" with a
// certificate from ca, and waits until it answers. It is stopped
// (SIGTERM, then SIGKILL) when the test ends.
func startDendrite(t *testing.T, bin string, ca *testserver.CA) *dendrite {
	t.Helper()
	dir := t.TempDir()
	httpPort, tlsPort := freePort(t), freePort(t)
	for tlsPort == httpPort {
		tlsPort = freePort(t)
	}
	serverName := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	keyID := writeMatrixKey(t, filepath.Join(dir, "matrix_key.pem"))
	certFile, keyFile := ca.Issue(t, "127.0.0.1")
	skipVerify := os.Getenv("INTEROP_DENDRITE_SKIP_TLS_VERIFY") != ""
	logLevel := envOr("INTEROP_DENDRITE_LOG_LEVEL", "info")
	cfgPath := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(cfgPath, []byte(dendriteConfig(dir, serverName, keyID, skipVerify, logLevel)), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "dendrite.log")
	d := &dendrite{
		dir: dir, logFile: logFile, bin: bin, ca: ca,
		args: []string{
			"-config", cfgPath,
			"-http-bind-address", fmt.Sprintf("127.0.0.1:%d", httpPort),
			"-https-bind-address", serverName,
			"-tls-cert", certFile, "-tls-key", keyFile,
			"-really-enable-open-registration",
		},
	}
	d.homeserver = &homeserver{
		label: "dendrite", clientURL: fmt.Sprintf("http://127.0.0.1:%d", httpPort), serverName: serverName,
		logs: func() string { return tailFile(logFile, 120) }, http: &http.Client{Timeout: 60 * time.Second},
	}
	t.Cleanup(func() {
		d.stop()
		keepLog(t, "dendrite.log", logFile)
		keepLog(t, "dendrite.yaml", cfgPath)
	})
	d.start(t)
	return d
}

// start runs the process (its output appended to the log file) and waits
// until the client API answers and the TLS listener serves its key
// through the CA's certificate.
func (d *dendrite) start(t *testing.T) {
	t.Helper()
	lf, err := os.OpenFile(d.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(d.bin, d.args...)
	cmd.Dir = d.dir
	cmd.Stdout, cmd.Stderr = lf, lf
	// Dendrite's federation client uses the system roots; Go reads
	// SSL_CERT_FILE for them, so the test CA is the one trusted root.
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+d.ca.CertFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start dendrite %s: %v", d.bin, err)
	}
	exited := make(chan struct{})
	d.cmd, d.exited = cmd, exited
	go func() {
		d.exitErr = cmd.Wait()
		lf.Close()
		close(exited)
	}()

	deadline := time.Now().Add(60 * time.Second)
	plain := &http.Client{Timeout: 5 * time.Second}
	caClient := d.ca.HTTPClient()
	caClient.Timeout = 5 * time.Second
	for {
		select {
		case <-exited:
			t.Fatalf("dendrite exited while starting: %v%s", d.exitErr, d.logTail())
		default:
		}
		ok := false
		if resp, err := plain.Get(d.clientURL + "/_matrix/client/versions"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if resp, err := caClient.Get("https://" + d.serverName + "/_matrix/key/v2/server"); err == nil {
					resp.Body.Close()
					ok = resp.StatusCode == http.StatusOK
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dendrite did not answer on %s and https://%s within 60s%s", d.clientURL, d.serverName, d.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop ends the process group: SIGTERM, then SIGKILL after 10 seconds.
func (d *dendrite) stop() {
	if d.cmd == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
}

// tailFile is the last n lines of a file.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines in %s)", len(lines)-n, path)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// logBuffer collects a server's log lines, safe for concurrent writers.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
	part  string
	file  *os.File
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file != nil {
		_, _ = b.file.Write(p)
	}
	s := b.part + string(p)
	parts := strings.Split(s, "\n")
	b.part = parts[len(parts)-1]
	b.lines = append(b.lines, parts[:len(parts)-1]...)
	return len(p), nil
}

func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := b.lines
	prefix := ""
	if len(lines) > n {
		prefix = fmt.Sprintf("... (%d earlier lines)\n", len(lines)-n)
		lines = lines[len(lines)-n:]
	}
	return prefix + strings.Join(lines, "\n")
}

// keepLog copies a file into INTEROP_LOG_DIR, when set, so logs outlive
// the test's temporary folders.
func keepLog(t *testing.T, name, path string) {
	dir := os.Getenv("INTEROP_LOG_DIR")
	if dir == "" {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Logf("keep %s: %v", name, err)
		return
	}
	if err := os.MkdirAll(dir, 0o755); err == nil {
		err = os.WriteFile(filepath.Join(dir, name), data, 0o644)
	}
	if err != nil {
		t.Logf("keep %s: %v", name, err)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
