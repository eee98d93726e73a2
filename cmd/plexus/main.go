// Command plexus is the Plexus Matrix homeserver. This file only parses the
// command line; everything else lives in the components.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/mxid"
	"github.com/plexus-chat/plexus/internal/server"
	"github.com/plexus-chat/plexus/internal/signingkey"
	"github.com/plexus-chat/plexus/internal/version"
	"github.com/plexus-chat/plexus/storage"
)

const usage = `Plexus, a Matrix homeserver.

Usage: plexus [command] [flags]

Commands:
  run              start the homeserver (the default)
  generate-config  write a commented config file
  generate-keys    write a new signing key
  create-account   create a local account
  server-notice    send a server notice through the running server (needs an admin token)
  media            quarantine, unquarantine or delete media: media delete mxc://server/id
  version          print the version
  complement-start run as a Complement test image (see build/complement)

Every command takes --data-dir DIR (default ./data) and --config FILE
(default DIR/plexus.yaml). Run 'plexus COMMAND -h' for a command's flags.
`

func main() {
	// No heap profiles are taken from a running server; the sampling's
	// stack buckets would cost more than a megabyte of resident memory.
	runtime.MemProfileRate = 0
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "plexus:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runServer(args, stdout, stderr)
	case "generate-config":
		return generateConfig(args, stdout, stderr)
	case "generate-keys":
		return generateKeys(args, stdout, stderr)
	case "create-account":
		return createAccount(args, stdout, stderr)
	case "server-notice":
		return serverNotice(args, stdout, stderr) // servernotice.go
	case "media":
		return mediaCommand(args, stdout, stderr)
	case "complement-start":
		return complementStart(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "plexus", version.String())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

// common holds the flags every command takes.
type common struct {
	dataDir, configPath string
}

func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *common) {
	fs := flag.NewFlagSet("plexus "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &common{}
	fs.StringVar(&c.dataDir, "data-dir", "data", "data folder: config, signing key, SQLite database, media")
	fs.StringVar(&c.configPath, "config", "", "config file (default DATA-DIR/plexus.yaml)")
	return fs, c
}

func (c *common) config() string {
	if c.configPath != "" {
		return c.configPath
	}
	return filepath.Join(c.dataDir, "plexus.yaml")
}

// loadConfig reads the config, first writing a default one when there is
// none: a fresh checkout starts with no setup at all.
func (c *common) loadConfig(stderr io.Writer) (*config.Config, error) {
	path := c.config()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		name := "localhost:8008"
		if env := os.Getenv("PLEXUS_SERVER_NAME"); env != "" {
			name = env
		}
		if err := writeConfig(path, config.Default(name), false); err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "Wrote a new config to %s\n", path)
	}
	return config.Load(path, c.dataDir)
}

// ensureTempDir makes $TMPDIR when it is set and missing: the FROM
// scratch images (build/docker, build/complement) have no /tmp, so they
// point TMPDIR into the data folder, which may be a fresh volume.
func ensureTempDir() error {
	if tmp := os.Getenv("TMPDIR"); tmp != "" {
		return os.MkdirAll(tmp, 0o700)
	}
	return nil
}

func writeConfig(path string, cfg config.Config, force bool) error {
	raw, err := config.Generate(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	mode := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		mode = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, mode, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists already (use --force to overwrite)", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(raw); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func runServer(args []string, stdout, stderr io.Writer) error {
	fs, c := newFlags("run", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ensureTempDir(); err != nil {
		return err
	}
	cfg, err := c.loadConfig(stderr)
	if err != nil {
		return err
	}
	server.SetupLogging(cfg)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, err := server.New(ctx, cfg)
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		srv.Shutdown(context.Background())
		return err
	}
	printBanner(stdout, cfg, srv, c)
	// Start-up (migrations, key loading) leaves garbage behind; hand its
	// memory back now rather than keep it until the heap grows again.
	debug.FreeOSMemory()

	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	select {
	case err := <-served:
		srv.Shutdown(context.Background())
		return err
	case <-ctx.Done():
	}
	logrus.Info("shutting down: finishing requests in flight")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	<-served
	logrus.Info("stopped")
	return nil
}

func printBanner(w io.Writer, cfg *config.Config, srv *server.Server, c *common) {
	fmt.Fprintf(w, "\nPlexus %s is running as %s\n", version.String(), cfg.ServerName)
	if srv.HTTPAddr != "" {
		fmt.Fprintf(w, "  client and federation API: http://%s\n", srv.HTTPAddr)
	}
	if srv.TLSAddr != "" {
		fmt.Fprintf(w, "  client and federation API: https://%s\n", srv.TLSAddr)
	}
	fmt.Fprintf(w, "  data folder: %s (config %s)\n", c.dataDir, c.config())
	fmt.Fprintf(w, "  create an account: plexus create-account --data-dir %s --username NAME --password PASS [--admin]\n", c.dataDir)
	if cfg.Registration.Open {
		fmt.Fprintln(w, "  open registration is on: clients can register themselves")
	}
	fmt.Fprintln(w)
}

func generateConfig(args []string, stdout, stderr io.Writer) error {
	fs, c := newFlags("generate-config", stderr)
	name := fs.String("server-name", "localhost:8008", "the server name, the domain in user IDs")
	force := fs.Bool("force", false, "overwrite an existing config file")
	toStdout := fs.Bool("stdout", false, "print the config instead of writing the file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := config.ValidateServerName(*name); err != nil {
		return fmt.Errorf("--server-name: %w", err)
	}
	cfg := config.Default(*name)
	if *toStdout {
		raw, err := config.Generate(cfg)
		if err != nil {
			return err
		}
		_, err = stdout.Write(raw)
		return err
	}
	if err := writeConfig(c.config(), cfg, *force); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Wrote %s\n", c.config())
	return nil
}

func generateKeys(args []string, stdout, stderr io.Writer) error {
	fs, c := newFlags("generate-keys", stderr)
	out := fs.String("signing-key", "", "where to write the key (default: the config's signing_key)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := *out
	if path == "" {
		cfg, err := c.loadConfig(stderr)
		if err != nil {
			return err
		}
		path = cfg.Path(cfg.SigningKey)
	}
	key, err := signingkey.Generate()
	if err != nil {
		return err
	}
	if err := signingkey.Write(path, key); err != nil {
		return fmt.Errorf("write signing key: %w", err)
	}
	fmt.Fprintf(stdout, "Wrote signing key %s to %s\n", key.ID, path)
	return nil
}

func createAccount(args []string, stdout, stderr io.Writer) error {
	fs, c := newFlags("create-account", stderr)
	username := fs.String("username", "", "the localpart of the new user (required)")
	password := fs.String("password", "", "the password (required)")
	admin := fs.Bool("admin", false, "make the user a server admin")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *username == "" || *password == "" {
		return errors.New("create-account needs --username and --password")
	}
	if !mxid.ValidNewLocalpart(*username) {
		return fmt.Errorf("--username %q: only a-z, 0-9 and . _ = - / + are allowed", *username)
	}
	cfg, err := c.loadConfig(stderr)
	if err != nil {
		return err
	}
	ctx := context.Background()
	db, err := storage.Open(cfg.DatabaseConn())
	if err != nil {
		return err
	}
	defer db.Close()
	accts, err := accounts.New(ctx, db, accounts.Options{BcryptCost: cfg.Registration.BcryptCost})
	if err != nil {
		return err
	}
	if _, err := accts.CreateAccount(ctx, *username, *password, *admin, false); err != nil {
		if errors.Is(err, accounts.ErrUserInUse) {
			return fmt.Errorf("@%s:%s exists already", *username, cfg.ServerName)
		}
		return err
	}
	fmt.Fprintf(stdout, "Created @%s:%s\n", *username, cfg.ServerName)
	return nil
}
