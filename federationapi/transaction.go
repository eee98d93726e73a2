package federationapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/httputil"
	rsapi "github.com/plexus-chat/plexus/roomserver/api"
	"github.com/plexus-chat/plexus/storage"
)

// The inbound half of transactions: PUT /_matrix/federation/v1/send/{txnId}.
// PDUs are checked (transaction_pdu.go) and handed to the roomserver, one
// room's in order and rooms in parallel; EDUs go to the sync API
// (transaction_edu.go). A repeated transaction ID from the same origin
// gets the first answer again without being processed again.

// Limits of one inbound transaction.
const (
	// The spec's limits; more is 400.
	maxInboundPDUs = 50
	maxInboundEDUs = 100
	maxTxnIDLength = 255
	// txnBudget bounds the work one transaction may cause, fetching what
	// its events lack included; the sender's request times out around a
	// minute or two.
	txnBudget = 50 * time.Second
	// maxGapFills bounds the events of one transaction whose missing prev
	// events are fetched.
	maxGapFills = 10
	// roomWorkers bounds the rooms processed at once.
	roomWorkers = 8
	// inboundTxnRetention is how long answers are kept for retries.
	inboundTxnRetention = 24 * time.Hour
)

// TransactionRoomserver is what inbound transactions need from the
// roomserver.
type TransactionRoomserver interface {
	rsapi.RemoteInputter
	rsapi.FederationInputQuerier
	// RoomVersion: ErrRoomNotFound for rooms we are not in.
	RoomVersion(ctx context.Context, roomID string) (gomatrixserverlib.RoomVersion, error)
	// Membership checks that the users EDUs are about are in the room.
	Membership(ctx context.Context, roomID, userID string) (rsapi.Membership, error)
	// ServerACLAllows applies the room's server ACL to an origin.
	ServerACLAllows(ctx context.Context, roomID, server string) (bool, error)
	// ResidentServers and InputOutOfBandMembership take the end of a
	// local user's invite or knock in a room we are not in
	// (transaction_outofband.go).
	ResidentServers(ctx context.Context, roomID string) ([]string, error)
	InputOutOfBandMembership(ctx context.Context, pdu gomatrixserverlib.PDU) error
}

// EDUSink takes other servers' ephemeral events; the sync API implements
// it. The handler has checked that the users are of the origin server, and
// for typing and receipts that they are joined to the room and the room's
// server ACL allows the origin.
type EDUSink interface {
	// RemoteTyping marks a remote user as typing in a room, or not.
	RemoteTyping(ctx context.Context, roomID, userID string, typing bool) error
	// RemoteReceipt stores a remote user's receipt (m.read).
	RemoteReceipt(ctx context.Context, roomID, userID, receiptType, threadID, eventID string, ts int64) error
	// RemotePresence stores a remote user's presence; the sink drops
	// updates about users who share no room with a local user.
	RemotePresence(ctx context.Context, userID, presence string, statusMsg *string, lastActiveAgo int64, currentlyActive bool) error
	// RemoteToDevice delivers send-to-device messages to local users
	// (user ID -> device ID or "*" -> content), once per sender and
	// message ID.
	RemoteToDevice(ctx context.Context, sender, eventType, messageID string, messages map[string]map[string]json.RawMessage) error
}

// KeyUpdateSink takes device list and cross-signing key updates from
// other servers, about users of the origin; KeyUpdates (keys_inbound.go)
// implements it over the key server.
type KeyUpdateSink interface {
	RemoteDeviceListUpdate(ctx context.Context, origin spec.ServerName, content json.RawMessage) error
	RemoteSigningKeyUpdate(ctx context.Context, origin spec.ServerName, content json.RawMessage) error
}

// TransactionDeps are what the transaction handler is built with.
type TransactionDeps struct {
	Roomserver TransactionRoomserver
	EDUs       EDUSink
	// Keys takes m.device_list_update and m.signing_key_update; when nil
	// they are accepted and ignored.
	Keys KeyUpdateSink
	// Sender, when set, learns that an origin is up when it sends us a
	// transaction, and stops backing off from it.
	Sender *Sender
}

// TransactionHandler serves inbound transactions.
type TransactionHandler struct {
	self    spec.ServerName
	client  fclient.FederationClient
	keyRing gomatrixserverlib.JSONVerifier
	db      *storage.DB
	rs      TransactionRoomserver
	edus    EDUSink
	keys    KeyUpdateSink
	sender  *Sender
	log     *logrus.Entry
	budget  time.Duration

	mu        sync.Mutex
	inflight  map[string]*inflightTxn // origin + "\x00" + txn ID
	lastPrune time.Time
}

type inflightTxn struct {
	done chan struct{}
	resp []byte
	err  error
}

// NewTransactionHandler builds the handler and registers
// PUT /_matrix/federation/v1/send/{txnID} on the federation API. It is
// built after the sync API, which takes the EDUs.
func NewTransactionHandler(fed *FederationAPI, deps TransactionDeps) *TransactionHandler {
	h := &TransactionHandler{
		self:     fed.ServerName(),
		client:   fed.Client(),
		keyRing:  fed.KeyRing(),
		db:       fed.store.db,
		rs:       deps.Roomserver,
		edus:     deps.EDUs,
		keys:     deps.Keys,
		sender:   deps.Sender,
		log:      logrus.WithField("component", "federationapi.transactions"),
		budget:   txnBudget,
		inflight: map[string]*inflightTxn{},
	}
	fed.Handle("/_matrix/federation/v1/send/{txnID}", h.serveSend, http.MethodPut)
	return h
}

// inboundTxn is a transaction's body. origin and origin_server_ts are
// not used: the request's signature says who sent it.
type inboundTxn struct {
	PDUs []json.RawMessage `json:"pdus"`
	EDUs []json.RawMessage `json:"edus"`
}

func (h *TransactionHandler) serveSend(w http.ResponseWriter, r *http.Request, req *fclient.FederationRequest, origin spec.ServerName) error {
	txnID := httputil.Vars(r)["txnID"]
	if txnID == "" || len(txnID) > maxTxnIDLength || !validText(txnID) {
		return httputil.InvalidParam("The transaction ID must be 1 to %d bytes", maxTxnIDLength)
	}
	var body inboundTxn
	if err := httputil.DecodeJSONObject(req.Content(), &body); err != nil {
		return err
	}
	if len(body.PDUs) > maxInboundPDUs || len(body.EDUs) > maxInboundEDUs {
		return httputil.BadJSON("A transaction holds at most %d PDUs and %d EDUs", maxInboundPDUs, maxInboundEDUs)
	}
	resp, err := h.once(r.Context(), origin, txnID, func(ctx context.Context) ([]byte, error) {
		results := h.process(ctx, origin, body)
		return json.Marshal(map[string]any{"pdus": results})
	})
	if err != nil {
		return err
	}
	writeRawJSON(w, resp)
	return nil
}

const (
	sqlInboundTxn      = `SELECT response FROM federationapi_inbound_txns WHERE origin = $1 AND txn_id = $2`
	sqlStoreInboundTxn = `INSERT INTO federationapi_inbound_txns (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (origin, txn_id) DO NOTHING`
	sqlPruneInboundTxns = `DELETE FROM federationapi_inbound_txns WHERE received_ts < $1`
)

// once runs process for a transaction the origin has not sent before and
// stores its answer; a transaction being processed or already answered
// gets that answer. Processing goes on if the request goes away, so that
// the origin's retry finds the answer.
func (h *TransactionHandler) once(ctx context.Context, origin spec.ServerName, txnID string, process func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	key := string(origin) + "\x00" + txnID
	h.mu.Lock()
	if f := h.inflight[key]; f != nil {
		h.mu.Unlock()
		select {
		case <-f.done:
			return f.resp, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &inflightTxn{done: make(chan struct{})}
	h.inflight[key] = f
	h.mu.Unlock()

	go func() {
		defer func() {
			h.mu.Lock()
			delete(h.inflight, key)
			h.mu.Unlock()
			close(f.done)
		}()
		work, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.budget+10*time.Second)
		defer cancel()
		var stored string
		err := h.db.Reader().QueryRowContext(work, sqlInboundTxn, string(origin), txnID).Scan(&stored)
		if err == nil {
			f.resp = []byte(stored)
			return
		}
		if !errors.Is(err, sql.ErrNoRows) {
			f.err = err
			return
		}
		f.err = safely(h.log, func() error {
			var err error
			f.resp, err = process(work)
			return err
		})
		if f.err != nil {
			return
		}
		now := time.Now()
		if _, err := h.db.Writer().ExecContext(work, sqlStoreInboundTxn, string(origin), txnID, string(f.resp), now.UnixMilli()); err != nil {
			h.log.WithError(err).Warn("cannot store a transaction's answer")
		}
		h.prune(work, now)
	}()
	select {
	case <-f.done:
		return f.resp, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// prune deletes old answers, at most every ten minutes.
func (h *TransactionHandler) prune(ctx context.Context, now time.Time) {
	h.mu.Lock()
	due := now.Sub(h.lastPrune) > 10*time.Minute
	if due {
		h.lastPrune = now
	}
	h.mu.Unlock()
	if !due {
		return
	}
	if _, err := h.db.Writer().ExecContext(ctx, sqlPruneInboundTxns, now.Add(-inboundTxnRetention).UnixMilli()); err != nil {
		h.log.WithError(err).Warn("cannot prune old transaction answers")
	}
}

// process handles a transaction's PDUs and, at the same time, its EDUs,
// and returns the PDUs' results by event ID.
func (h *TransactionHandler) process(ctx context.Context, origin spec.ServerName, txn inboundTxn) map[string]fclient.PDUResult {
	ctx, cancel := context.WithTimeout(ctx, h.budget)
	defer cancel()
	if h.sender != nil {
		h.sender.MarkAlive(origin)
	}
	edus, keyEDUs := splitKeyEDUs(txn.EDUs)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = safely(h.log, func() error {
			h.processEDUs(ctx, origin, edus)
			return nil
		})
	}()
	results := h.processPDUs(ctx, origin, txn.PDUs)
	// Device list updates after the PDUs: one about a user whose join is
	// in the same transaction (keys_join.go) counts only once the join is
	// in.
	_ = safely(h.log, func() error {
		h.processEDUs(ctx, origin, keyEDUs)
		return nil
	})
	wg.Wait()
	return results
}

// inboundPDU is one PDU of a transaction, parsed as far as it goes.
type inboundPDU struct {
	roomID  string
	eventID string
	pdu     gomatrixserverlib.PDU
	err     error // why it could not be parsed
}

// processPDUs parses the PDUs, then inputs each room's in order, rooms in
// parallel.
func (h *TransactionHandler) processPDUs(ctx context.Context, origin spec.ServerName, raws []json.RawMessage) map[string]fclient.PDUResult {
	results := map[string]fclient.PDUResult{}
	var mu sync.Mutex
	setResult := func(eventID string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			results[eventID] = fclient.PDUResult{Error: err.Error()}
		} else {
			results[eventID] = fclient.PDUResult{}
		}
	}
	var order []string
	byRoom := map[string][]inboundPDU{}
	seen := map[string]bool{}
	for _, raw := range raws {
		p := h.parsePDU(ctx, raw)
		if p.eventID == "" {
			h.log.WithFields(logrus.Fields{"origin": origin, "error": errString(p.err)}).Info("dropped a PDU without an event ID")
			continue
		}
		if seen[p.eventID] {
			continue
		}
		seen[p.eventID] = true
		if p.err != nil {
			setResult(p.eventID, p.err)
			continue
		}
		if _, ok := byRoom[p.roomID]; !ok {
			order = append(order, p.roomID)
		}
		byRoom[p.roomID] = append(byRoom[p.roomID], p)
	}
	gaps := &gapBudget{left: maxGapFills}
	sem := make(chan struct{}, roomWorkers)
	var wg sync.WaitGroup
	for _, roomID := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func(pdus []inboundPDU) {
			defer wg.Done()
			defer func() { <-sem }()
			for _, p := range pdus {
				setResult(p.eventID, safely(h.log, func() error { return h.processPDU(ctx, origin, p.pdu, gaps) }))
			}
		}(byRoom[roomID])
	}
	wg.Wait()
	return results
}

// safely runs fn and turns a panic into an error: nothing another server
// sends may take the server down (the HTTP layer's recovery does not
// cover the goroutines a transaction runs in).
func safely(log *logrus.Entry, fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.WithFields(logrus.Fields{"panic": fmt.Sprint(p), "stack": string(debug.Stack())}).Error("panic while processing a transaction")
			err = pduErrorf("Internal error")
		}
	}()
	return fn()
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// pduError is a PDU's result: why it was not accepted, for the origin.
type pduError struct{ msg string }

func (e *pduError) Error() string { return e.msg }

func pduErrorf(format string, args ...any) error {
	return &pduError{msg: fmt.Sprintf(format, args...)}
}

// parsePDU finds a PDU's room and version and parses it as an untrusted
// event of that version: its format is checked, and if its content hash
// does not match it is redacted, as the spec says. Its event ID is found
// as far as possible even when it fails, to key its result.
func (h *TransactionHandler) parsePDU(ctx context.Context, raw json.RawMessage) inboundPDU {
	roomID := gjson.GetBytes(raw, "room_id")
	if roomID.Type != gjson.String || !validRoomIDForTxn(roomID.Str) {
		return inboundPDU{eventID: bestEffortEventID(raw, ""), err: pduErrorf("The event has no valid room_id")}
	}
	p := inboundPDU{roomID: roomID.Str}
	version, err := h.rs.RoomVersion(ctx, p.roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		p.eventID, p.err = bestEffortEventID(raw, ""), pduErrorf("This server is not in room %s", p.roomID)
		return p
	}
	if err != nil {
		h.log.WithError(err).Error("cannot read a room's version")
		p.eventID, p.err = bestEffortEventID(raw, ""), pduErrorf("Internal error")
		return p
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		p.eventID, p.err = bestEffortEventID(raw, ""), pduErrorf("Unsupported room version %s", version)
		return p
	}
	pdu, err := parseUntrusted(verImpl, raw)
	if err != nil {
		p.eventID, p.err = bestEffortEventID(raw, version), pduErrorf("Invalid event: %v", err)
		return p
	}
	if pdu.RoomID().String() != p.roomID {
		p.eventID, p.err = pdu.EventID(), pduErrorf("Invalid event: room ID mismatch")
		return p
	}
	p.eventID, p.pdu = pdu.EventID(), pdu
	return p
}

// bestEffortEventID names a PDU that could not be parsed: by its
// event_id (room versions 1 and 2), else by its reference hash in the
// room's version. For a room we do not know the version is guessed from
// the event's shape: 12 for a room ID without a server name, 4 to 10 for
// an event with an "origin" (whose IDs agree for most events), else 11.
// "" when it cannot be named.
func bestEffortEventID(raw json.RawMessage, version gomatrixserverlib.RoomVersion) string {
	if id := gjson.GetBytes(raw, "event_id"); id.Type == gjson.String && len(id.Str) <= 255 {
		return id.Str
	}
	if version == "" {
		switch {
		case !strings.Contains(gjson.GetBytes(raw, "room_id").Str, ":"):
			version = gomatrixserverlib.RoomVersionV12
		case gjson.GetBytes(raw, "origin").Exists():
			version = gomatrixserverlib.RoomVersionV10
		default:
			version = gomatrixserverlib.RoomVersionV11
		}
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return ""
	}
	pdu, err := verImpl.NewEventFromTrustedJSON(raw, false)
	if err != nil {
		return ""
	}
	return pdu.EventID()
}

// validRoomIDForTxn checks a room ID's shape: "!", then an opaque part
// and, before room version 12, ":server"; at most 255 bytes.
func validRoomIDForTxn(id string) bool {
	return len(id) > 1 && len(id) <= 255 && id[0] == '!'
}

// gapBudget counts the gap fills a transaction may still do.
type gapBudget struct {
	mu   sync.Mutex
	left int
}

func (g *gapBudget) take() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.left <= 0 {
		return false
	}
	g.left--
	return true
}
