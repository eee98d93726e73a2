package federationapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"github.com/plexus-chat/plexus/internal/streamconsumer"
	"github.com/plexus-chat/plexus/keyserver"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// Our users' device list changes, sent to the servers that share a room
// with them. The DeviceListSender follows the key server's device list
// stream from its own position (a row of federationapi_consumer) and
// turns each change of a local user into an EDU in the sender's queues:
// a device's keys uploaded, changed, signed or deleted into
// m.device_list_update (stream_id: the change's stream position; prev_id:
// the user's previous device change), a cross-signing change into
// m.signing_key_update. The EDUs and the new position are written in one
// transaction, so each change is queued once, and the queues send each
// destination's EDUs in order. Device names are not shared.
//
// The servers are those with joined members in the user's rooms when
// the change is read. When the user joins a room, its servers that were
// not receiving the list get it (keys_join.go); a server that joins one
// of the user's rooms later fetches the list on its first query
// (/user/devices or /user/keys/query), and one that missed an update
// sees the gap in prev_id and resyncs.

// deviceListConsumer is the DeviceListSender's row in federationapi_consumer.
const deviceListConsumer = "keyserver_device_lists"

// deviceListBatch is how many changes one step reads.
const deviceListBatch = 100

// DeviceListSource is what the DeviceListSender needs from the key server.
type DeviceListSource interface {
	DeviceListPosition() int64
	DeviceListNotify(pos int64) <-chan struct{}
	LocalDeviceListUpdates(ctx context.Context, after int64, limit int) ([]keyserver.DeviceListUpdate, error)
	// QueryKeys with requester "" gives the cross-signing keys other
	// servers may see.
	QueryKeys(ctx context.Context, requester string, deviceKeys map[string][]string) (*keyserver.QueryResponse, error)
	// UserDevices is a local user's list, announced on joins (keys_join.go).
	UserDevices(ctx context.Context, userID string) (*keyserver.UserDevices, error)
	// Cached remote lists no local user shares a room with any more are
	// forgotten (keys_leave.go).
	RemoteDeviceListStreamID(ctx context.Context, userID string) (int64, bool, error)
	ForgetRemoteDeviceList(ctx context.Context, userID string) error
}

// DeviceListSender sends our users' device list changes to other servers.
type DeviceListSender struct {
	s    *Sender
	keys DeviceListSource
	pos  int64 // only the sending goroutine touches it
	log  *logrus.Entry
}

// NewDeviceListSender builds the device list sender over the sender's
// queues. On its first run it starts at the stream's end: other servers
// fetch what was there before when they first need it.
func NewDeviceListSender(ctx context.Context, s *Sender, keys DeviceListSource) (*DeviceListSender, error) {
	pos, ok, err := s.store.position(ctx, deviceListConsumer)
	if err != nil {
		return nil, err
	}
	if !ok {
		pos = keys.DeviceListPosition()
		if err := s.store.setPosition(ctx, deviceListConsumer, pos); err != nil {
			return nil, err
		}
	}
	d := &DeviceListSender{s: s, keys: keys, pos: pos, log: logrus.WithField("component", "federationapi.devicelists")}
	s.localJoin, s.membershipChanged = d.announceJoin, d.membershipChanged // before the sender starts
	return d, nil
}

// Start follows the device list stream until ctx ends; the sender's Wait
// waits for it too.
func (d *DeviceListSender) Start(ctx context.Context) {
	d.s.wg.Add(1)
	go func() {
		defer d.s.wg.Done()
		d.run(ctx)
	}()
}

func (d *DeviceListSender) run(ctx context.Context) {
	streamconsumer.Loop(ctx, d.step, func() <-chan struct{} { return d.keys.DeviceListNotify(d.pos) }, d.log, "queueing device list updates")
}

// deviceListEDU is one EDU for some destinations.
type deviceListEDU struct {
	dests []spec.ServerName
	edu   queuedEDU
}

// step queues the EDUs of one batch of changes and returns how many
// changes it read.
func (d *DeviceListSender) step(ctx context.Context) (int, error) {
	// LocalDeviceListUpdates reads at least up to the position it finds
	// at its start, which is at least this one: without a full batch,
	// everything up to upTo has been seen.
	upTo := d.keys.DeviceListPosition()
	if upTo <= d.pos {
		return 0, nil
	}
	updates, err := d.keys.LocalDeviceListUpdates(ctx, d.pos, deviceListBatch)
	if err != nil {
		return 0, err
	}
	next := upTo
	if len(updates) == deviceListBatch {
		next = updates[len(updates)-1].StreamID
	}
	dests := map[string][]spec.ServerName{} // per user, for this batch
	var edus []deviceListEDU
	for _, u := range updates {
		to, ok := dests[u.UserID]
		if !ok {
			if to, err = d.destinations(ctx, u.UserID); err != nil {
				return 0, err
			}
			dests[u.UserID] = to
		}
		if len(to) == 0 {
			continue
		}
		edu, err := d.edu(ctx, u)
		if err != nil {
			return 0, err
		}
		if edu != nil {
			edus = append(edus, deviceListEDU{dests: to, edu: *edu})
		}
	}
	if err := d.queue(ctx, edus, next); err != nil {
		return 0, err
	}
	d.pos = next
	woken := map[spec.ServerName]bool{}
	for _, e := range edus {
		for _, dest := range e.dests {
			if !woken[dest] {
				woken[dest] = true
				d.s.wake(dest)
			}
		}
	}
	return max(len(updates), 1), nil
}

// destinations are the other servers with joined members in the rooms
// the user is joined to.
func (d *DeviceListSender) destinations(ctx context.Context, userID string) ([]spec.ServerName, error) {
	memberships, err := d.s.rs.Memberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	var servers []string
	for _, m := range memberships {
		if m.Membership != spec.Join {
			continue
		}
		rs, err := d.s.rs.ResidentServers(ctx, m.RoomID)
		if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
			return nil, err
		}
		servers = append(servers, rs...)
	}
	return d.s.others(servers), nil
}

// edu builds the EDU of one change; nil when there is nothing to send (a
// cross-signing change that left no keys).
func (d *DeviceListSender) edu(ctx context.Context, u keyserver.DeviceListUpdate) (*queuedEDU, error) {
	if u.DeviceID == "" {
		q, err := d.keys.QueryKeys(ctx, "", map[string][]string{u.UserID: {}})
		if err != nil {
			return nil, err
		}
		master, self := q.MasterKeys[u.UserID], q.SelfSigningKeys[u.UserID]
		if master == nil && self == nil {
			return nil, nil
		}
		c := map[string]any{"user_id": u.UserID}
		if master != nil {
			c["master_key"] = master
		}
		if self != nil {
			c["self_signing_key"] = self
		}
		content, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		// It carries the current keys: a newer one replaces an unsent one.
		return &queuedEDU{Type: "m.signing_key_update", Content: content,
			CoalesceKey: coalesceKey("m.signing_key_update", u.UserID)}, nil
	}
	prev := u.PrevIDs
	if prev == nil {
		prev = []int64{}
	}
	c := map[string]any{
		"user_id": u.UserID, "device_id": u.DeviceID, "stream_id": u.StreamID,
		"prev_id": prev, "deleted": u.Deleted,
	}
	if !u.Deleted && u.Keys != nil {
		c["keys"] = u.Keys
	}
	content, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return &queuedEDU{Type: "m.device_list_update", Content: content}, nil
}

// queue writes the EDUs and the new position in one transaction.
func (d *DeviceListSender) queue(ctx context.Context, edus []deviceListEDU, pos int64) error {
	now := storage.NowMillis()
	return d.s.store.db.WithTx(ctx, func(tx *sql.Tx) error {
		for _, e := range edus {
			for _, dest := range e.dests {
				if e.edu.CoalesceKey != "" {
					if _, err := tx.ExecContext(ctx, sqlCoalesceEDU, string(dest), e.edu.CoalesceKey); err != nil {
						return err
					}
				}
				if _, err := tx.ExecContext(ctx, sqlQueueEDU, string(dest), e.edu.Type, string(e.edu.Content), e.edu.CoalesceKey, now, 0); err != nil {
					return fmt.Errorf("queue EDU: %w", err)
				}
			}
		}
		if _, err := tx.ExecContext(ctx, sqlSetSenderPos, deviceListConsumer, pos); err != nil {
			return fmt.Errorf("store device list position: %w", err)
		}
		return nil
	})
}
