package testserver

import (
	"context"
	"net"
	"time"

	"github.com/plexus-chat/plexus/internal/server"
)

// Stop shuts the server down as if its process ended: it stops serving
// and closes its database. Restart brings it back.
func (s *Server) Stop() {
	s.t.Helper()
	s.shutdown()
}

// Restart starts a stopped server again (stopping it first if it runs) on
// the same config: the same database, signing key, server name and TLS
// port, so other servers reach it where they did. Its client URL changes.
func (s *Server) Restart() {
	s.t.Helper()
	s.shutdown()
	srv, err := server.New(context.Background(), s.Config)
	if err != nil {
		s.t.Fatalf("restart server: %v", err)
	}
	if s.Config.Listen.TLS != "" {
		// The port was ours a moment ago; take it again.
		var ln net.Listener
		for i := 0; ; i++ {
			if ln, err = net.Listen("tcp", s.Config.Listen.TLS); err == nil || i == 50 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			s.t.Fatalf("restart server: reopen TLS port: %v", err)
		}
		srv.TLSListener = ln
	}
	if err := srv.Listen(); err != nil {
		s.t.Fatalf("restart server: listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	s.Server, s.done = srv, done
	s.URL = "http://" + srv.HTTPAddr
	if srv.TLSAddr != "" {
		s.TLSURL = "https://" + srv.TLSAddr
	}
}

// shutdown stops the running server, if any, and waits for it.
func (s *Server) shutdown() {
	if s.done == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Server.Shutdown(ctx); err != nil {
		s.t.Errorf("shutdown: %v", err)
	}
	if err := <-s.done; err != nil {
		s.t.Errorf("serve: %v", err)
	}
	s.done = nil
}
