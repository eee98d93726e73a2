// Package server assembles Plexus from its components and runs its HTTP
// listeners. cmd/plexus and the integration tests both start servers here.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/accounts"
	"github.com/plexus-chat/plexus/clientapi"
	"github.com/plexus-chat/plexus/federationapi"
	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/httputil"
	"github.com/plexus-chat/plexus/internal/signingkey"
	"github.com/plexus-chat/plexus/keyserver"
	"github.com/plexus-chat/plexus/mediaapi"
	"github.com/plexus-chat/plexus/reports"
	"github.com/plexus-chat/plexus/roomserver"
	"github.com/plexus-chat/plexus/searchapi"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/syncapi"
	"github.com/plexus-chat/plexus/userdirectory"
)

// Server is a running homeserver.
type Server struct {
	Config     *config.Config
	DB         *storage.DB
	Key        *signingkey.Key
	Accounts   *accounts.Accounts
	Roomserver *roomserver.Roomserver
	Sync       *syncapi.SyncAPI
	Federation *federationapi.FederationAPI
	Keys       *keyserver.KeyServer  // end-to-end encryption keys and key backup
	Sender     *federationapi.Sender // outbound transactions
	Search     *searchapi.SearchAPI  // POST /search over its own index of the room stream
	Directory  *userdirectory.Directory
	Media      *mediaapi.MediaAPI // content repository
	Handler    http.Handler

	// TLSListener, when set before Listen, is used for listen.tls instead
	// of opening that address: tests whose server name must hold the TLS
	// port open the port first.
	TLSListener net.Listener

	// stop ends the background work (stream consumers).
	stop context.CancelFunc

	servers   []*http.Server
	listeners []net.Listener
	// Addrs are the addresses actually listened on: HTTP first, then TLS.
	HTTPAddr, TLSAddr string
}

// New opens the database and signing key and builds every component.
func New(ctx context.Context, cfg *config.Config) (*Server, error) {
	key, _, err := signingkey.LoadOrGenerate(cfg.Path(cfg.SigningKey))
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	db, err := storage.Open(cfg.DatabaseConn())
	if err != nil {
		return nil, err
	}
	accts, err := accounts.New(ctx, db, accounts.Options{
		BcryptCost:          cfg.Registration.BcryptCost,
		AccessTokenLifetime: time.Duration(cfg.Auth.AccessTokenLifetime),
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	rs, err := roomserver.New(ctx, db, spec.ServerName(cfg.ServerName), key.ID, key.PrivateKey)
	if err != nil {
		db.Close()
		return nil, err
	}
	fed, err := federationapi.New(ctx, cfg, db, key)
	if err != nil {
		db.Close()
		return nil, err
	}
	// Transactions: the sender is built before the sync API, which hands it
	// our users' EDUs; the inbound handler after, as it hands the sync API
	// other servers' EDUs (federationapi/sender*.go, transaction*.go).
	sender, err := federationapi.NewSender(ctx, fed, rs)
	if err != nil {
		db.Close()
		return nil, err
	}
	// End-to-end encryption keys (keyserver/): /sync reads its device list
	// stream and key counts, the client API serves /keys/* and /room_keys/*.
	// Other servers' users' keys come through the federation API
	// (federationapi/keys*.go), which then follows the device list stream
	// to send our users' changes.
	remoteKeys := federationapi.NewRemoteKeys(fed, rs)
	keys, err := keyserver.New(ctx, db, cfg.ServerName, accts, keyserver.WithRemoteKeys(remoteKeys))
	if err != nil {
		db.Close()
		return nil, err
	}
	deviceLists, err := federationapi.NewDeviceListSender(ctx, sender, keys)
	if err != nil {
		db.Close()
		return nil, err
	}
	// Push gateways are reached over the same trusted CAs as federation.
	pushTLS, err := cfg.OutboundTLS()
	if err != nil {
		db.Close()
		return nil, err
	}
	sync, err := syncapi.New(ctx, db, cfg.ServerName, rs, accts,
		syncapi.WithEDUSender(sender), syncapi.WithKeyServer(keys),
		// Backfill on /messages from other servers (syncapi/backfill.go).
		syncapi.WithBackfill(syncapi.BackfillConfig{ServerName: fed.ServerName(), Rooms: rs, Federation: fed.Client(), KeyRing: fed.KeyRing()}),
		// Push rules drive unread counts and /notifications
		// (syncapi/push.go); the client API reaches them as Deps.Push.
		syncapi.WithPush(),
		// Notifications to the users' push gateways (syncapi/pushgateway.go).
		syncapi.WithPushGateway(syncapi.PushGatewayConfig{TLS: pushTLS, RetryFor: time.Duration(cfg.Push.RetryFor)}))
	if err != nil {
		db.Close()
		return nil, err
	}
	// Server-side search indexes the room stream from its own position (searchapi/).
	search, err := searchapi.New(ctx, db, cfg.ServerName, rs)
	if err != nil {
		db.Close()
		return nil, err
	}
	// The user directory follows memberships and profiles in the room stream (userdirectory/).
	directory, err := userdirectory.New(ctx, db, cfg.ServerName, rs, accts,
		userdirectory.Options{SearchAllUsers: cfg.UserDirectory.SearchAllUsers})
	if err != nil {
		db.Close()
		return nil, err
	}
	federationapi.NewTransactionHandler(fed, federationapi.TransactionDeps{Roomserver: rs, EDUs: sync, Sender: sender,
		Keys: federationapi.NewKeyUpdates(keys, remoteKeys)})
	// Read endpoints for other servers and OpenID tokens (federationapi/reads*.go).
	fed.RegisterReads(rs, accts, keys)
	fed.RegisterHierarchy(rs) // federationapi/hierarchy.go: spaces for other servers
	// Membership handshakes over federation, both directions (federationapi/membership*.go).
	membership := federationapi.NewMembership(fed, rs, func(ctx context.Context, localpart string) (bool, error) {
		acc, err := accts.Account(ctx, localpart)
		if errors.Is(err, accounts.ErrNotFound) {
			return false, nil
		}
		return err == nil && !acc.Deactivated, err
	}, sender)
	reportStore, err := reports.New(ctx, db) // users' content reports, for the admins
	if err != nil {
		db.Close()
		return nil, err
	}
	client := clientapi.New(cfg, clientapi.Deps{
		Accounts: accts, Rooms: rs, Waker: sync, CatchUp: sync,
		Keys: keys, KeyChanges: sync,
		OpenID:           fed.OpenIDTokens(),
		RemoteMembership: membership,
		RemoteQueries:    federationapi.NewQueries(fed),
		Push:             sync,
		Relations:        sync, // bundled aggregations on /event (syncapi/aggregations.go)
		Reports:          reportStore,
	})
	// The content repository (mediaapi/): other servers' media through the
	// federation API, ours served to them on its authenticated routes.
	media, err := mediaapi.New(ctx, cfg, db, mediaapi.WithFederation(fed))
	if err != nil {
		db.Close()
		return nil, err
	}
	for path, h := range media.FederationRoutes() {
		fed.Handle(path, federationapi.Handler(h), http.MethodGet)
	}
	s := &Server{Config: cfg, DB: db, Key: key, Accounts: accts, Roomserver: rs, Sync: sync, Federation: fed,
		Keys: keys, Sender: sender, Media: media}
	s.Search, s.Directory = search, directory
	if s.Handler, err = s.routes(client); err != nil {
		db.Close()
		return nil, err
	}
	bg, stop := context.WithCancel(context.Background())
	s.stop = stop
	sync.Start(bg)
	sender.Start(bg)
	deviceLists.Start(bg) // Shutdown waits for it with the sender
	search.Start(bg)
	directory.Start(bg)
	return s, nil
}

func (s *Server) routes(client *clientapi.API) (http.Handler, error) {
	root := httputil.NewRouter()
	client.Register(root)
	s.Sync.Register(root, client.Authed)
	s.Search.Register(root, client.Authed)
	s.Directory.Register(root, client.Authed)
	s.Federation.Register(root)
	s.Media.Register(root, client.Authed)
	root.Handle("/metrics", httputil.MetricsHandler()).Methods(http.MethodGet)
	root.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var one int
		if err := s.DB.Reader().QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			httputil.WriteError(w, r, &httputil.Error{Status: http.StatusServiceUnavailable, Code: "M_UNKNOWN", Message: "Database unavailable"})
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("OK"))
	}).Methods(http.MethodGet)
	routes, err := httputil.IndexRoutes(root)
	if err != nil {
		return nil, err
	}
	// Uploads may be larger than other requests (media.max_upload_size).
	uploads := httputil.Middleware(routes, max(s.Config.MaxRequestBodySize, s.Media.MaxUploadSize()))
	return mediaapi.SplitUploads(httputil.Middleware(routes, s.Config.MaxRequestBodySize), uploads), nil
}

// Listen opens the configured listeners; Serve then serves on them. They
// are apart so that a caller knows the addresses (port 0 in tests) before
// serving.
func (s *Server) Listen() error {
	cfg := s.Config
	if cfg.Listen.HTTP != "" {
		ln, err := net.Listen("tcp", cfg.Listen.HTTP)
		if err != nil {
			return fmt.Errorf("listen.http %s: %w", cfg.Listen.HTTP, err)
		}
		s.HTTPAddr = ln.Addr().String()
		s.add(ln)
	}
	if cfg.Listen.TLS != "" {
		cert, created, err := cfg.TLSCertificate()
		if err != nil {
			s.closeListeners()
			return err
		}
		if created {
			logrus.WithField("path", cfg.Path(config.SelfSignedCertFile)).Warn(
				"made a self-signed TLS certificate; other servers accept it only if they skip verification")
		}
		ln := s.TLSListener
		if ln == nil {
			if ln, err = net.Listen("tcp", cfg.Listen.TLS); err != nil {
				s.closeListeners()
				return fmt.Errorf("listen.tls %s: %w", cfg.Listen.TLS, err)
			}
		}
		s.TLSAddr = ln.Addr().String()
		s.add(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	}
	return nil
}

func (s *Server) add(ln net.Listener) {
	s.listeners = append(s.listeners, ln)
	s.servers = append(s.servers, &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          logrusErrorLog(),
	})
}

func (s *Server) closeListeners() {
	for _, ln := range s.listeners {
		ln.Close()
	}
}

// Serve serves on the listeners until Shutdown; it returns the first
// serving error, or nil after a clean shutdown.
func (s *Server) Serve() error {
	errs := make(chan error, len(s.servers))
	for i, srv := range s.servers {
		go func() { errs <- srv.Serve(s.listeners[i]) }()
	}
	var first error
	for range s.servers {
		if err := <-errs; err != nil && !errors.Is(err, http.ErrServerClosed) && first == nil {
			first = err
		}
	}
	return first
}

// Shutdown stops accepting requests, lets those in flight finish (until ctx
// ends) and closes the database.
func (s *Server) Shutdown(ctx context.Context) error {
	var first error
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil && first == nil {
			first = err
		}
	}
	s.stop()
	s.Media.Close()
	s.Sender.Wait() // its queue workers use the database
	// The sync API's push gateway sender uses the database too.
	s.Sync.Wait()
	s.Federation.Close()
	if err := s.DB.Close(); err != nil && first == nil {
		first = err
	}
	return first
}

// SetupLogging applies the log settings to the global logger.
func SetupLogging(cfg *config.Config) {
	level, err := logrus.ParseLevel(cfg.Log.Level)
	if err != nil {
		level = logrus.InfoLevel
	}
	logrus.SetLevel(level)
	logrus.SetOutput(os.Stderr)
	if cfg.Log.Format == "json" {
		logrus.SetFormatter(&logrus.JSONFormatter{})
	} else {
		logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
}
