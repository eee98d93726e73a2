package federationapi

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/streamconsumer"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// The outbound half of transactions: the Sender reads the roomserver's
// output stream from its own stored position and queues every event our
// users send for the other servers in the room; the sync API hands it our
// users' ephemeral events (typing, receipts, presence, to-device). Queues
// live in the database per destination and are sent as transactions, one
// in flight per destination, with back-off. See sender_queue.go.

// senderConsumer is the sender's row in federationapi_consumer.
const senderConsumer = "roomserver_output"

// Typing notifications are worth sending for a minute (the time receiving
// servers keep them), presence for half an hour (after which receivers
// think the user is offline anyway).
const (
	typingEDULife   = time.Minute
	presenceEDULife = 30 * time.Minute
)

// SenderRoomserver is what the sender needs from the roomserver.
type SenderRoomserver interface {
	OutputSince(ctx context.Context, position int64, limit int) ([]rsapi.OutputEvent, error)
	LatestPosition(ctx context.Context) (int64, error)
	Notify(position int64) <-chan struct{}
	// Event reads the events to send.
	Event(ctx context.Context, eventID string) (*rsapi.Event, error)
	// ResidentServers are the servers with joined members in a room.
	ResidentServers(ctx context.Context, roomID string) ([]string, error)
	// Memberships finds the rooms whose servers get a user's presence.
	Memberships(ctx context.Context, userID string) ([]rsapi.Membership, error)
	// CurrentState finds a room's members when we leave it (keys_leave.go).
	CurrentState(ctx context.Context, roomID string) ([]gomatrixserverlib.PDU, error)
}

// Sender sends our events and EDUs to other servers.
type Sender struct {
	self   spec.ServerName
	client txnClient
	rs     SenderRoomserver
	store  senderStore
	pos    int64 // stream position; only the consumer goroutine touches it
	// stored is the position last written to the database, at storedAt.
	stored   int64
	storedAt time.Time
	log      *logrus.Entry
	policy   retryPolicy

	mu     sync.Mutex
	ctx    context.Context // set by Start; workers run under it
	queues map[spec.ServerName]*destQueue
	wg     sync.WaitGroup

	// localJoin, when set, announces a local user's device list to the
	// servers of a room they joined (keys_join.go).
	localJoin func(ctx context.Context, out rsapi.OutputEvent, dests []spec.ServerName) error
	// membershipChanged, when set, sees every event of the stream and
	// forgets the cached device lists a leave leaves unshared or a remote
	// user's join may have let go stale (keys_leave.go).
	membershipChanged func(ctx context.Context, out rsapi.OutputEvent) error
	// fed is nil in unit tests.
	fed *FederationAPI
	// handed are our events servers took in a membership handshake.
	handed handedEvents
}

// positionInterval is how often at most the sender stores its position
// after events that went nowhere (see step).
const positionInterval = time.Second

// txnClient is the part of fclient.FederationClient the sender uses.
type txnClient interface {
	SendTransaction(ctx context.Context, t gomatrixserverlib.Transaction) (fclient.RespSend, error)
}

// NewSender builds the sender. It is built before the sync API, which
// hands it EDUs; Start begins sending.
func NewSender(ctx context.Context, fed *FederationAPI, rs SenderRoomserver) (*Sender, error) {
	s, err := newSender(ctx, fed.ServerName(), fed.Client(), fed.store.db, rs)
	if s != nil {
		s.fed = fed
	}
	return s, err
}

func newSender(ctx context.Context, self spec.ServerName, client txnClient, db *storage.DB, rs SenderRoomserver) (*Sender, error) {
	s := &Sender{
		self:   self,
		client: client,
		rs:     rs,
		store:  senderStore{db: db},
		log:    logrus.WithField("component", "federationapi.sender"),
		policy: defaultRetryPolicy,
		queues: map[spec.ServerName]*destQueue{},
	}
	pos, ok, err := s.store.position(ctx, senderConsumer)
	if err != nil {
		return nil, err
	}
	if !ok {
		// First run: what is in the stream already was never meant for
		// other servers (nothing federated before the sender existed).
		if pos, err = rs.LatestPosition(ctx); err != nil {
			return nil, err
		}
		if err := s.store.setPosition(ctx, senderConsumer, pos); err != nil {
			return nil, err
		}
	}
	s.pos, s.stored = pos, pos
	return s, nil
}

// Start consumes the roomserver's output and sends the queues (those left
// by an earlier run too) until ctx ends.
func (s *Sender) Start(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.resume(ctx)
		s.consume(ctx)
	}()
}

// Wait waits for the sender's goroutines after Start's context ended.
func (s *Sender) Wait() { s.wg.Wait() }

// resume starts the destinations that have something queued.
func (s *Sender) resume(ctx context.Context) {
	for {
		dests, err := s.store.pendingDestinations(ctx)
		if err == nil {
			for _, d := range dests {
				s.wake(d)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.log.WithError(err).Error("cannot read the outbound queues; retrying")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// consume reads the output stream until ctx ends.
func (s *Sender) consume(ctx context.Context) {
	streamconsumer.Loop(ctx, s.step, func() <-chan struct{} { return s.rs.Notify(s.pos) }, s.log, "queueing room events")
}

// step queues one batch of the stream and returns how many entries it
// read. An event is queued together with the new position, so it is
// queued once. The position after events that go nowhere (most of them:
// other servers' events, events of rooms without other servers) is
// stored at most once per positionInterval: a write per event would take
// the database's one writer just when the sync API needs it to deliver
// the event. After a restart those few events are read again, and still
// go nowhere unless a server joined their room meanwhile, which then
// gets an event of the room it can take or ignore.
func (s *Sender) step(ctx context.Context) (int, error) {
	batch, err := s.rs.OutputSince(ctx, s.pos, 100)
	if err != nil || len(batch) == 0 {
		return 0, err
	}
	for _, out := range batch {
		if s.membershipChanged != nil {
			if err := s.membershipChanged(ctx, out); err != nil {
				s.log.WithError(err).WithField("event_id", out.Event.EventID()).Warn("cannot check the device lists a leave leaves unshared")
			}
		}
		dests, err := s.eventDestinations(ctx, out)
		if err != nil {
			return 0, err
		}
		if len(dests) == 0 {
			s.pos = out.Position
			continue
		}
		queued := map[spec.ServerName][]string{}
		handed := s.handedTo(out.Event.EventID())
		for _, d := range dests {
			if d != handed && !signedBy(out.Event, d) {
				queued[d] = []string{out.Event.EventID()}
			}
		}
		if err := s.store.queuePDUs(ctx, queued, senderConsumer, out.Position); err != nil {
			return 0, err
		}
		// After the join itself, so that it reaches the servers first;
		// lost if we stop in between, then they fetch the list when
		// first asked.
		if s.localJoin != nil {
			if err := s.localJoin(ctx, out, dests); err != nil {
				s.log.WithError(err).WithField("event_id", out.Event.EventID()).Warn("cannot announce a joining user's device list")
			}
		}
		s.pos, s.stored, s.storedAt = out.Position, out.Position, time.Now()
		for _, d := range dests {
			s.wake(d)
		}
	}
	if s.pos != s.stored && time.Since(s.storedAt) >= positionInterval {
		if err := s.store.setPosition(ctx, senderConsumer, s.pos); err != nil {
			return 0, err
		}
		s.stored, s.storedAt = s.pos, time.Now()
	}
	return len(batch), nil
}

// eventDestinations are the servers an event of the stream goes to: none
// unless one of our users sent it; then every other server with joined
// members in the room now and, for a membership event, the server of the
// user it is about (a kicked or banned user's server learns of it), except
// for invites, which reach the invitee's server through the /invite
// handshake.
//
// Servers the room's server ACL denies are not left out: the spec says
// "Servers should still send events to denied servers if they are still
// residents of the room" (client-server API, server ACLs); they refuse
// what such servers send us instead (transaction.go).
func (s *Sender) eventDestinations(ctx context.Context, out rsapi.OutputEvent) ([]spec.ServerName, error) {
	ev := out.Event
	if userServerName(string(ev.SenderID())) != s.self {
		return nil, nil
	}
	servers, err := s.rs.ResidentServers(ctx, out.RoomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if ev.Type() == spec.MRoomMember && ev.StateKey() != nil {
		if m, err := ev.Membership(); err == nil && m != spec.Invite {
			servers = append(servers, string(userServerName(*ev.StateKey())))
		}
	}
	return s.others(servers), nil
}

// signedBy reports whether a server signed an event: it has it already
// (the resident server of a join, leave or knock we made through it signs
// the event it takes), so sending it again is a waste.
func signedBy(ev gomatrixserverlib.PDU, server spec.ServerName) bool {
	return gjson.GetBytes(ev.JSON(), "signatures."+gjson.Escape(string(server))).Exists()
}

// others turns server names into destinations: sorted, without
// duplicates, ourselves or invalid names.
func (s *Sender) others(servers []string) []spec.ServerName {
	out := make([]spec.ServerName, 0, len(servers))
	for _, name := range servers {
		d := spec.ServerName(name)
		if d == "" || d == s.self || slices.Contains(out, d) {
			continue
		}
		if _, _, ok := spec.ParseAndValidateServerName(d); !ok {
			continue
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// userServerName is the server name of a user ID: everything after the first
// colon, as a localpart has none. "" when there is no colon.
func userServerName(userID string) spec.ServerName {
	if !strings.HasPrefix(userID, "@") {
		return ""
	}
	_, server, ok := strings.Cut(userID, ":")
	if !ok {
		return ""
	}
	return spec.ServerName(server)
}

// SendEventToRoom queues an event stored in the roomserver for every
// server with joined members in its room except ours and those in except.
// The stream does this for our users' events; the join handshake uses it
// for a remote user's join, leave or knock that went through us, which
// the spec makes the resident server pass on to the room.
func (s *Sender) SendEventToRoom(ctx context.Context, pdu gomatrixserverlib.PDU, except ...spec.ServerName) error {
	servers, err := s.rs.ResidentServers(ctx, pdu.RoomID().String())
	if err != nil {
		return err
	}
	dests := slices.DeleteFunc(s.others(servers), func(d spec.ServerName) bool { return slices.Contains(except, d) })
	queued := map[spec.ServerName][]string{}
	for _, d := range dests {
		queued[d] = []string{pdu.EventID()}
	}
	if err := s.store.queuePDUs(ctx, queued, "", 0); err != nil {
		return err
	}
	for _, d := range dests {
		s.wake(d)
	}
	return nil
}

// ---- EDUs from the sync API (its EDUSender interface) ----

// SendTyping tells the other servers in a room that one of our users
// started or stopped typing.
func (s *Sender) SendTyping(ctx context.Context, roomID, userID string, typing bool) error {
	if err := s.checkLocal(userID); err != nil {
		return err
	}
	content, err := json.Marshal(map[string]any{"room_id": roomID, "user_id": userID, "typing": typing})
	if err != nil {
		return err
	}
	return s.sendRoomEDU(ctx, roomID, queuedEDU{
		Type: "m.typing", Content: content,
		CoalesceKey: coalesceKey("m.typing", roomID, userID),
		Expires:     time.Now().Add(typingEDULife),
	})
}

// SendReceipt tells the other servers in a room of one of our users'
// public read receipts.
func (s *Sender) SendReceipt(ctx context.Context, roomID, userID, receiptType, threadID, eventID string, ts int64) error {
	if err := s.checkLocal(userID); err != nil {
		return err
	}
	data := map[string]any{"ts": ts}
	if threadID != "" {
		data["thread_id"] = threadID
	}
	content, err := json.Marshal(map[string]any{roomID: map[string]any{receiptType: map[string]any{
		userID: map[string]any{"event_ids": []string{eventID}, "data": data},
	}}})
	if err != nil {
		return err
	}
	return s.sendRoomEDU(ctx, roomID, queuedEDU{
		Type: "m.receipt", Content: content,
		CoalesceKey: coalesceKey("m.receipt", roomID, userID, receiptType, threadID),
	})
}

// SendPresence tells the servers that share a room with one of our users
// of their presence. statusMsg "" is none.
func (s *Sender) SendPresence(ctx context.Context, userID, presence, statusMsg string, lastActiveAgo int64, currentlyActive bool) error {
	if err := s.checkLocal(userID); err != nil {
		return err
	}
	memberships, err := s.rs.Memberships(ctx, userID)
	if err != nil {
		return err
	}
	var servers []string
	for _, m := range memberships {
		if m.Membership != spec.Join {
			continue
		}
		rs, err := s.rs.ResidentServers(ctx, m.RoomID)
		if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
			return err
		}
		servers = append(servers, rs...)
	}
	dests := s.others(servers)
	if len(dests) == 0 {
		return nil
	}
	update := map[string]any{"user_id": userID, "presence": presence, "last_active_ago": lastActiveAgo, "currently_active": currentlyActive}
	if statusMsg != "" {
		update["status_msg"] = statusMsg
	}
	content, err := json.Marshal(map[string]any{"push": []any{update}})
	if err != nil {
		return err
	}
	return s.queueEDU(ctx, dests, queuedEDU{
		Type: "m.presence", Content: content,
		CoalesceKey: coalesceKey("m.presence", userID),
		Expires:     time.Now().Add(presenceEDULife),
	})
}

// SendToDevice sends one of our users' send-to-device messages to the
// servers of the (remote) users they are for: messages is user ID ->
// device ID (or "*") -> content. Messages for our own users are skipped.
func (s *Sender) SendToDevice(ctx context.Context, sender, eventType string, messages map[string]map[string]json.RawMessage) error {
	if err := s.checkLocal(sender); err != nil {
		return err
	}
	byServer := map[spec.ServerName]map[string]map[string]json.RawMessage{}
	for userID, devices := range messages {
		server := userServerName(userID)
		if server == "" || server == s.self || len(devices) == 0 {
			continue
		}
		if byServer[server] == nil {
			byServer[server] = map[string]map[string]json.RawMessage{}
		}
		byServer[server][userID] = devices
	}
	for server, msgs := range byServer {
		dests := s.others([]string{string(server)})
		if len(dests) == 0 {
			continue
		}
		content, err := json.Marshal(map[string]any{
			"sender": sender, "type": eventType, "message_id": randomID(24), "messages": msgs,
		})
		if err != nil {
			return err
		}
		if err := s.queueEDU(ctx, dests, queuedEDU{Type: "m.direct_to_device", Content: content}); err != nil {
			return err
		}
	}
	return nil
}

// coalesceKey names what a newer EDU replaces: a JSON array of its type
// and parts, unambiguous whatever the parts hold.
func coalesceKey(parts ...string) string {
	key, _ := json.Marshal(parts)
	return string(key)
}

func (s *Sender) checkLocal(userID string) error {
	if userServerName(userID) != s.self {
		return fmt.Errorf("federation sender: %s is not one of our users", userID)
	}
	return nil
}

// sendRoomEDU queues an EDU for the other servers with joined members in
// a room.
func (s *Sender) sendRoomEDU(ctx context.Context, roomID string, edu queuedEDU) error {
	servers, err := s.rs.ResidentServers(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.queueEDU(ctx, s.others(servers), edu)
}

func (s *Sender) queueEDU(ctx context.Context, dests []spec.ServerName, edu queuedEDU) error {
	if len(dests) == 0 {
		return nil
	}
	if err := s.store.queueEDU(ctx, dests, edu); err != nil {
		return err
	}
	for _, d := range dests {
		s.wake(d)
	}
	return nil
}

// randomID is n random characters from [A-Za-z0-9].
func randomID(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	max := big.NewInt(int64(len(alphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic(err) // crypto/rand does not fail
		}
		b[i] = alphabet[v.Int64()]
	}
	return string(b)
}
