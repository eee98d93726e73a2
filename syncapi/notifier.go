package syncapi

import "sync"

// notifier wakes the long-polling /sync requests of particular users: a
// user's channel is closed when something for them arrives, and replaced.
type notifier struct {
	mu    sync.Mutex
	users map[string]chan struct{}
}

func newNotifier() *notifier { return &notifier{users: map[string]chan struct{}{}} }

// listen returns a channel closed at the user's next wake. Take it before
// looking for news, so that nothing arriving in between is missed.
func (n *notifier) listen(userID string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch, ok := n.users[userID]
	if !ok {
		ch = make(chan struct{})
		n.users[userID] = ch
	}
	return ch
}

// wake wakes a user's listeners. Users nobody listens for cost nothing.
func (n *notifier) wake(userID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ch, ok := n.users[userID]; ok {
		close(ch)
		delete(n.users, userID)
	}
}
