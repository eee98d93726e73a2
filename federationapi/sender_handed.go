package federationapi

import (
	"slices"
	"sync"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// maxHandedEvents bounds the events remembered as handed over: a join
// that never reaches the stream (its storing failed) is forgotten when
// newer ones push it out.
const maxHandedEvents = 1024

// handedEvents remembers our users' membership events that went to a
// server through a handshake (send_join, send_leave, send_knock): that
// server has them, and is the one to pass them on, so the sender leaves
// it out when the event comes through the stream.
type handedEvents struct {
	mu    sync.Mutex
	to    map[string]spec.ServerName
	order []string
}

// HandedTo records that server already has our event (it took it in a
// membership handshake).
func (s *Sender) HandedTo(eventID string, server spec.ServerName) {
	h := &s.handed
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.to == nil {
		h.to = map[string]spec.ServerName{}
	}
	if _, ok := h.to[eventID]; !ok {
		h.order = append(h.order, eventID)
	}
	h.to[eventID] = server
	for len(h.order) > maxHandedEvents {
		delete(h.to, h.order[0])
		h.order = h.order[1:]
	}
}

// handedTo reports whether the event was handed to the server; the
// stream brings each event once, so the record goes once read.
func (s *Sender) handedTo(eventID string) spec.ServerName {
	h := &s.handed
	h.mu.Lock()
	defer h.mu.Unlock()
	server, ok := h.to[eventID]
	if ok {
		delete(h.to, eventID)
		if i := slices.Index(h.order, eventID); i >= 0 {
			h.order = slices.Delete(h.order, i, i+1)
		}
	}
	return server
}
