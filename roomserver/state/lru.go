package state

import "sync"

// lru is a small thread-safe least-recently-used cache bounded by the total
// weight of its items (the number of items when every weight is 1). It
// holds only immutable values, so handing out shared values is safe.
type lru[K comparable, V any] struct {
	mu    sync.Mutex
	limit int
	total int
	items map[K]*lruNode[K, V]
	// root is the sentinel of a circular list: root.next is the most
	// recently used item, root.prev the least.
	root lruNode[K, V]
}

type lruNode[K comparable, V any] struct {
	key        K
	val        V
	weight     int
	prev, next *lruNode[K, V]
}

func newLRU[K comparable, V any](limit int) *lru[K, V] {
	c := &lru[K, V]{limit: limit, items: make(map[K]*lruNode[K, V])}
	c.root.next, c.root.prev = &c.root, &c.root
	return c
}

func (c *lru[K, V]) unlink(n *lruNode[K, V]) {
	n.prev.next, n.next.prev = n.next, n.prev
	n.prev, n.next = nil, nil
}

func (c *lru[K, V]) pushFront(n *lruNode[K, V]) {
	n.prev, n.next = &c.root, c.root.next
	c.root.next.prev = n
	c.root.next = n
}

// get returns the value of k and marks it as recently used.
func (c *lru[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	if c.root.next != n {
		c.unlink(n)
		c.pushFront(n)
	}
	return n.val, true
}

// add stores v under k (replacing any previous value) and evicts the least
// recently used items until the total weight fits the limit. An item heavier
// than the whole limit is not stored.
func (c *lru[K, V]) add(k K, v V, weight int) {
	if weight < 1 {
		weight = 1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.items[k]; ok {
		c.unlink(n)
		delete(c.items, k)
		c.total -= n.weight
	}
	if weight > c.limit {
		return
	}
	n := &lruNode[K, V]{key: k, val: v, weight: weight}
	c.items[k] = n
	c.pushFront(n)
	c.total += weight
	for c.total > c.limit {
		old := c.root.prev
		c.unlink(old)
		delete(c.items, old.key)
		c.total -= old.weight
	}
}

// len returns the number of items.
func (c *lru[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}
