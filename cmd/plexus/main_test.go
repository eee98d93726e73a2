package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var binary string

// TestMain builds the real binary once: these tests run it as a user would.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "plexus-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "plexus")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func plexus(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// started is a running plexus process and its client API URL.
type started struct {
	cmd *exec.Cmd
	url string
	out *bytes.Buffer
}

var listenLine = regexp.MustCompile(`client and federation API: (http://\S+)`)

func start(t *testing.T, dataDir string) *started {
	t.Helper()
	cmd := exec.Command(binary, "--data-dir", dataDir)
	cmd.Env = append(os.Environ(), "PLEXUS_LISTEN=127.0.0.1:0", "PLEXUS_BCRYPT_COST=4", "PLEXUS_LOG_LEVEL=warn")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	type banner struct{ url, text string }
	found := make(chan banner, 1)
	go func() {
		// The banner ends with an empty line; hand it over whole.
		var text strings.Builder
		url := ""
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			text.WriteString(sc.Text() + "\n")
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil && url == "" {
				url = m[1]
			}
			if sc.Text() == "" && url != "" {
				found <- banner{url, text.String()}
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case b := <-found:
		return &started{cmd: cmd, url: b.url, out: bytes.NewBufferString(b.text)}
	case <-time.After(30 * time.Second):
		t.Fatalf("server did not start; stderr:\n%s", stderr.String())
	}
	return nil
}

func (s *started) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGINT: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server did not stop after SIGINT")
	}
}

func post(t *testing.T, url string, body any) (int, map[string]any) {
	t.Helper()
	data, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

func TestFirstRunCreatesDataFolderAndSecondRunReusesIt(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s := start(t, dataDir)
	if !strings.Contains(s.out.String(), "create-account") {
		t.Errorf("banner does not say how to create an account:\n%s", s.out)
	}
	for _, f := range []string{"plexus.yaml", "signing.key", "plexus.db"} {
		if _, err := os.Stat(filepath.Join(dataDir, f)); err != nil {
			t.Errorf("data folder lacks %s: %v", f, err)
		}
	}
	key1, _ := os.ReadFile(filepath.Join(dataDir, "signing.key"))

	// The generated config opens registration for localhost.
	status, body := post(t, s.url+"/_matrix/client/v3/register", map[string]any{
		"username": "alice", "password": "pw", "auth": map[string]string{"type": "m.login.dummy"},
	})
	if status != 200 || body["user_id"] != "@alice:localhost:8008" {
		t.Fatalf("register: %d %v", status, body)
	}
	// create-account works beside a running server.
	if out, err := plexus(t, []string{"PLEXUS_BCRYPT_COST=4"}, "create-account", "--data-dir", dataDir, "--username", "bob", "--password", "pw2", "--admin"); err != nil {
		t.Fatalf("create-account: %v\n%s", err, out)
	}
	if out, err := plexus(t, nil, "create-account", "--data-dir", dataDir, "--username", "bob", "--password", "x"); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("duplicate create-account: %v\n%s", err, out)
	}
	s.stop(t)

	s = start(t, dataDir)
	defer s.stop(t)
	key2, _ := os.ReadFile(filepath.Join(dataDir, "signing.key"))
	if !bytes.Equal(key1, key2) {
		t.Fatal("the second start made a new signing key")
	}
	for user, pw := range map[string]string{"alice": "pw", "bob": "pw2"} {
		status, body = post(t, s.url+"/_matrix/client/v3/login", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": user}, "password": pw,
		})
		if status != 200 {
			t.Fatalf("login %s after restart: %d %v", user, status, body)
		}
	}
}

func TestCommands(t *testing.T) {
	dir := t.TempDir()
	if out, err := plexus(t, nil, "version"); err != nil || !strings.HasPrefix(out, "plexus ") {
		t.Fatalf("version: %v %q", err, out)
	}
	out, err := plexus(t, nil, "generate-config", "--stdout", "--server-name", "example.org")
	if err != nil || !strings.Contains(out, `server_name: "example.org"`) || !strings.Contains(out, "PLEXUS_DATABASE") {
		t.Fatalf("generate-config --stdout: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "custom.yaml")
	if out, err := plexus(t, nil, "generate-config", "--config", cfgPath, "--server-name", "example.org"); err != nil {
		t.Fatalf("generate-config: %v\n%s", err, out)
	}
	if out, err := plexus(t, nil, "generate-config", "--config", cfgPath); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("generate-config overwrote a file: %v\n%s", err, out)
	}
	keyPath := filepath.Join(dir, "k.key")
	if out, err := plexus(t, nil, "generate-keys", "--signing-key", keyPath); err != nil || !strings.Contains(out, "ed25519:") {
		t.Fatalf("generate-keys: %v\n%s", err, out)
	}
	if out, err := plexus(t, nil, "generate-keys", "--signing-key", keyPath); err == nil {
		t.Fatalf("generate-keys overwrote a key:\n%s", out)
	}
	if out, err := plexus(t, nil, "frobnicate"); err == nil || !strings.Contains(out, "unknown command") {
		t.Fatalf("unknown command: %v\n%s", err, out)
	}
	if out, err := plexus(t, nil, "create-account", "--data-dir", dir, "--username", "Bad Name", "--password", "x"); err == nil || !strings.Contains(out, "--username") {
		t.Fatalf("bad username: %v\n%s", err, out)
	}
}

func TestBadConfigNamesTheField(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "plexus.yaml")
	os.WriteFile(cfg, []byte("server_name: \"example.org\"\nlog:\n  level: loud\n"), 0o600)
	out, err := plexus(t, nil, "run", "--data-dir", dir)
	if err == nil || !strings.Contains(out, "log.level") {
		t.Fatalf("want an error naming log.level: %v\n%s", err, out)
	}
	os.WriteFile(cfg, []byte("server_nmae: x\n"), 0o600)
	out, err = plexus(t, nil, "run", "--data-dir", dir)
	if err == nil || !strings.Contains(out, "server_nmae") {
		t.Fatalf("want an error naming the unknown field: %v\n%s", err, out)
	}
}
