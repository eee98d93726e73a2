package pushrules

import (
	"hash/fnv"
	"sync"
)

// userLocks serialise the read-modify-write of a user's stored rules
// between the client API (rule edits) and the sync API (storing the
// defaults on a first sync), within this process.
var userLocks [64]sync.Mutex

// LockUser locks a user's stored push rules until the returned function
// is called.
func LockUser(userID string) (unlock func()) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(userID))
	m := &userLocks[h.Sum32()%uint32(len(userLocks))]
	m.Lock()
	return m.Unlock
}
