package federationapi

import (
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

// handedTo returns the server an event was handed to, if any. The
// record stays (an event may come through the stream more than once)
// until newer ones push it out.
func (s *Sender) handedTo(eventID string) spec.ServerName {
	h := &s.handed
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.to[eventID]
}
