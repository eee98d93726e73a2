package e2eetest

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/crypto/goolm/account"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// A minimal encrypting Matrix client: the cryptography (Olm accounts and
// sessions, Megolm ratchets, ed25519 signing and verification) is
// mautrix-go's pure-Go goolm; everything else (key upload, query, claim,
// to-device messages, room events, /sync) goes over our HTTP API as a
// real client's would. It follows the spec's end-to-end encryption
// module: m.olm.v1.curve25519-aes-sha2 to-device payloads with sender,
// recipient and keys checked, m.room_key to share Megolm sessions, and
// m.megolm.v1.aes-sha2 room events.

const (
	algOlm    = "m.olm.v1.curve25519-aes-sha2"
	algMegolm = "m.megolm.v1.aes-sha2"
	v3        = "/_matrix/client/v3"
)

// deviceInfo is a device whose keys passed the library's signature check.
type deviceInfo struct {
	userID, deviceID, ed25519, curve25519 string
}

// inboundGroup is a Megolm session received over Olm.
type inboundGroup struct {
	sess   *session.MegolmInboundSession
	roomID string
	// sender is the device whose Olm session delivered the key.
	sender deviceInfo
}

// outboundGroup is the Megolm session a device encrypts a room with.
type outboundGroup struct {
	sess       *session.MegolmOutboundSession
	sharedWith map[string]bool // curve25519 keys of devices that have it
}

// message is a room message the device decrypted.
type message struct {
	roomID, sender, body, eventID string
	senderDevice                  deviceInfo
}

// device is one logged-in device of a user with its Olm account.
type device struct {
	t     *testing.T
	s     *testserver.Server
	u     *testserver.User
	acct  *account.Account
	ed    string
	curve string
	since string
	txn   int

	olm      map[string][]olm.Session         // by the other device's curve25519 key
	inbound  map[string]*inboundGroup         // by sender key + "|" + session ID
	outbound map[string]*outboundGroup        // by room ID
	devices  map[string]map[string]deviceInfo // verified devices by user and device ID
	changed  map[string]bool                  // users seen in device_lists.changed
	invites  map[string]bool                  // room IDs invited to
	pending  []gjson.Result                   // encrypted room events not decrypted yet
	pendRoom []string                         // their rooms
	messages []message                        // decrypted room messages
	failed   map[string]error                 // event ID -> why it could not be decrypted
	members  map[string]map[string]string     // room -> user -> membership seen in /sync
}

// newDevice makes an Olm account for a logged-in device and uploads its
// identity keys, five signed one-time keys and a fallback key.
func newDevice(t *testing.T, s *testserver.Server, u *testserver.User) *device {
	t.Helper()
	acct, err := account.NewAccount()
	if err != nil {
		t.Fatal(err)
	}
	ed, curve, err := acct.IdentityKeys()
	if err != nil {
		t.Fatal(err)
	}
	d := &device{
		t: t, s: s, u: u, acct: acct, ed: string(ed), curve: string(curve),
		olm: map[string][]olm.Session{}, inbound: map[string]*inboundGroup{}, outbound: map[string]*outboundGroup{},
		devices: map[string]map[string]deviceInfo{}, changed: map[string]bool{}, invites: map[string]bool{},
		failed: map[string]error{}, members: map[string]map[string]string{},
	}
	d.uploadKeys(5)
	return d
}

func (d *device) String() string { return d.u.UserID + "/" + d.u.DeviceID }

// sign signs obj (which has no signatures yet) with the device's ed25519
// key, as the appendix "Signing JSON" says, and returns the signatures.
func (d *device) sign(obj map[string]any) map[string]map[string]string {
	d.t.Helper()
	canonical, err := canonicaljson.Marshal(obj)
	if err != nil {
		d.t.Fatal(err)
	}
	sig, err := d.acct.Sign(canonical)
	if err != nil {
		d.t.Fatal(err)
	}
	return map[string]map[string]string{d.u.UserID: {"ed25519:" + d.u.DeviceID: string(sig)}}
}

// uploadKeys publishes the device keys, n new one-time keys and a
// fallback key.
func (d *device) uploadKeys(n uint) {
	d.t.Helper()
	dev := d.u.DeviceID
	dk := map[string]any{
		"user_id": d.u.UserID, "device_id": dev, "algorithms": []string{algOlm, algMegolm},
		"keys": map[string]string{"curve25519:" + dev: d.curve, "ed25519:" + dev: d.ed},
	}
	dk["signatures"] = d.sign(dk)
	if err := d.acct.GenOneTimeKeys(n); err != nil {
		d.t.Fatal(err)
	}
	if err := d.acct.GenFallbackKey(); err != nil {
		d.t.Fatal(err)
	}
	otks, err := d.acct.OneTimeKeys()
	if err != nil {
		d.t.Fatal(err)
	}
	oneTime := map[string]any{}
	for keyID, key := range otks {
		obj := map[string]any{"key": key}
		obj["signatures"] = d.sign(obj)
		oneTime["signed_curve25519:"+keyID] = obj
	}
	fallback := map[string]any{}
	for keyID, key := range d.acct.FallbackKeyUnpublished() {
		obj := map[string]any{"key": key, "fallback": true}
		obj["signatures"] = d.sign(obj)
		fallback["signed_curve25519:"+keyID] = obj
	}
	r := d.s.MustOK("POST", v3+"/keys/upload", d.u.AccessToken, map[string]any{
		"device_keys": dk, "one_time_keys": oneTime, "fallback_keys": fallback,
	})
	if got := r.Get("one_time_key_counts.signed_curve25519").Int(); got != int64(len(otks)) {
		d.t.Fatalf("%s: server holds %d one-time keys, uploaded %d: %s", d, got, len(otks), r)
	}
	d.acct.MarkKeysAsPublished()
}

// query asks /keys/query for users' devices and keeps those whose
// signatures the library verifies. A device whose ed25519 key changed
// since it was first seen fails the test.
func (d *device) query(userIDs ...string) {
	d.t.Helper()
	q := map[string][]string{}
	for _, u := range userIDs {
		q[u] = []string{}
	}
	r := d.s.MustOK("POST", v3+"/keys/query", d.u.AccessToken, map[string]any{"device_keys": q})
	if f := r.Get("failures"); len(f.Map()) != 0 {
		d.t.Fatalf("%s: /keys/query failures: %s", d, f.Raw)
	}
	for _, userID := range userIDs {
		for deviceID, keys := range r.Get("device_keys." + gjson.Escape(userID)).Map() {
			if keys.Get("user_id").Str != userID || keys.Get("device_id").Str != deviceID {
				d.t.Fatalf("%s: keys of %s/%s name another device: %s", d, userID, deviceID, keys.Raw)
			}
			ed := keys.Get("keys." + gjson.Escape("ed25519:"+deviceID)).Str
			curve := keys.Get("keys." + gjson.Escape("curve25519:"+deviceID)).Str
			ok, err := signatures.VerifySignatureJSON(json.RawMessage(keys.Raw), id.UserID(userID), deviceID, id.Ed25519(ed))
			if err != nil || !ok {
				d.t.Fatalf("%s: the keys of %s/%s do not verify (%v): %s", d, userID, deviceID, err, keys.Raw)
			}
			if known, ok := d.devices[userID][deviceID]; ok && known.ed25519 != ed {
				d.t.Fatalf("%s: the ed25519 key of %s/%s changed", d, userID, deviceID)
			}
			if d.devices[userID] == nil {
				d.devices[userID] = map[string]deviceInfo{}
			}
			d.devices[userID][deviceID] = deviceInfo{userID: userID, deviceID: deviceID, ed25519: ed, curve25519: curve}
		}
	}
}

// deviceIDs are the known devices of a user, sorted.
func (d *device) deviceIDs(userID string) []string {
	var ids []string
	for id := range d.devices[userID] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// byCurve finds a known device by its curve25519 key.
func (d *device) byCurve(userID, curve string) (deviceInfo, bool) {
	for _, dev := range d.devices[userID] {
		if dev.curve25519 == curve {
			return dev, true
		}
	}
	return deviceInfo{}, false
}

// ensureOlm claims a one-time key of each target device without an Olm
// session (checking its signature) and starts an outbound session.
func (d *device) ensureOlm(targets []deviceInfo) {
	d.t.Helper()
	claim := map[string]map[string]string{}
	for _, dev := range targets {
		if len(d.olm[dev.curve25519]) > 0 {
			continue
		}
		if claim[dev.userID] == nil {
			claim[dev.userID] = map[string]string{}
		}
		claim[dev.userID][dev.deviceID] = "signed_curve25519"
	}
	if len(claim) == 0 {
		return
	}
	r := d.s.MustOK("POST", v3+"/keys/claim", d.u.AccessToken, map[string]any{"one_time_keys": claim})
	if f := r.Get("failures"); len(f.Map()) != 0 {
		d.t.Fatalf("%s: /keys/claim failures: %s", d, f.Raw)
	}
	for _, dev := range targets {
		if _, asked := claim[dev.userID][dev.deviceID]; !asked {
			continue
		}
		keys := r.Get("one_time_keys." + gjson.Escape(dev.userID) + "." + gjson.Escape(dev.deviceID)).Map()
		if len(keys) != 1 {
			d.t.Fatalf("%s: claimed %d keys of %s/%s: %s", d, len(keys), dev.userID, dev.deviceID, r)
		}
		for keyID, key := range keys {
			ok, err := signatures.VerifySignatureJSON(json.RawMessage(key.Raw), id.UserID(dev.userID), dev.deviceID, id.Ed25519(dev.ed25519))
			if err != nil || !ok {
				d.t.Fatalf("%s: one-time key %s of %s/%s does not verify (%v): %s", d, keyID, dev.userID, dev.deviceID, err, key.Raw)
			}
			sess, err := d.acct.NewOutboundSession(id.Curve25519(dev.curve25519), id.Curve25519(key.Get("key").Str))
			if err != nil {
				d.t.Fatal(err)
			}
			d.olm[dev.curve25519] = append(d.olm[dev.curve25519], sess)
		}
	}
}

// olmEncrypt is the m.room.encrypted content of a to-device event for
// one device, over the newest Olm session with it.
func (d *device) olmEncrypt(to deviceInfo, eventType string, content any) map[string]any {
	d.t.Helper()
	payload, err := json.Marshal(map[string]any{
		"type": eventType, "content": content,
		"sender": d.u.UserID, "sender_device": d.u.DeviceID, "keys": map[string]string{"ed25519": d.ed},
		"recipient": to.userID, "recipient_keys": map[string]string{"ed25519": to.ed25519},
	})
	if err != nil {
		d.t.Fatal(err)
	}
	sessions := d.olm[to.curve25519]
	msgType, body, err := sessions[len(sessions)-1].Encrypt(payload)
	if err != nil {
		d.t.Fatal(err)
	}
	return map[string]any{
		"algorithm": algOlm, "sender_key": d.curve,
		"ciphertext": map[string]any{to.curve25519: map[string]any{"type": int(msgType), "body": string(body)}},
	}
}

// sendToDevice sends Olm-encrypted to-device events, one per device.
func (d *device) sendToDevice(eventType string, contents map[deviceInfo]any) {
	d.t.Helper()
	messages := map[string]map[string]any{}
	for to, content := range contents {
		if messages[to.userID] == nil {
			messages[to.userID] = map[string]any{}
		}
		messages[to.userID][to.deviceID] = d.olmEncrypt(to, eventType, content)
	}
	d.txn++
	d.s.MustOK("PUT", fmt.Sprintf("%s/sendToDevice/m.room.encrypted/e2ee%d", v3, d.txn), d.u.AccessToken, map[string]any{"messages": messages})
}

// shareRoomKey starts the room's Megolm session if there is none and
// sends its current key over Olm (m.room_key) to each target device that
// does not have it yet.
func (d *device) shareRoomKey(roomID string, targets []deviceInfo) {
	d.t.Helper()
	g := d.outbound[roomID]
	if g == nil {
		sess, err := session.NewMegolmOutboundSession()
		if err != nil {
			d.t.Fatal(err)
		}
		g = &outboundGroup{sess: sess, sharedWith: map[string]bool{}}
		d.outbound[roomID] = g
	}
	var to []deviceInfo
	for _, dev := range targets {
		if dev.curve25519 != d.curve && !g.sharedWith[dev.curve25519] {
			to = append(to, dev)
		}
	}
	if len(to) == 0 {
		return
	}
	d.ensureOlm(to)
	contents := map[deviceInfo]any{}
	for _, dev := range to {
		contents[dev] = map[string]any{
			"algorithm": algMegolm, "room_id": roomID,
			"session_id": string(g.sess.ID()), "session_key": g.sess.Key(),
		}
		g.sharedWith[dev.curve25519] = true
	}
	d.sendToDevice("m.room_key", contents)
}

// sendEncrypted encrypts a text message with the room's Megolm session
// and sends it as m.room.encrypted.
func (d *device) sendEncrypted(roomID, body string) string {
	d.t.Helper()
	g := d.outbound[roomID]
	if g == nil {
		d.t.Fatalf("%s: no Megolm session for %s", d, roomID)
	}
	plaintext, err := json.Marshal(map[string]any{
		"type": "m.room.message", "room_id": roomID,
		"content": map[string]string{"msgtype": "m.text", "body": body},
	})
	if err != nil {
		d.t.Fatal(err)
	}
	ciphertext, err := g.sess.Encrypt(plaintext)
	if err != nil {
		d.t.Fatal(err)
	}
	d.txn++
	r := d.s.MustOK("PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.encrypted/e2ee%d", v3, url.PathEscape(roomID), d.txn), d.u.AccessToken, map[string]any{
		"algorithm": algMegolm, "sender_key": d.curve, "device_id": d.u.DeviceID,
		"session_id": string(g.sess.ID()), "ciphertext": string(ciphertext),
	})
	return r.Get("event_id").Str
}

// sync runs one /sync (waiting up to timeout for news) and takes in what
// it brings: to-device events first, so that room keys are there for the
// room events of the same response.
func (d *device) sync(timeout time.Duration) {
	d.t.Helper()
	path := fmt.Sprintf("%s/sync?timeout=%d", v3, timeout.Milliseconds())
	if d.since != "" {
		path += "&since=" + url.QueryEscape(d.since)
	}
	r := d.s.MustOK("GET", path, d.u.AccessToken, nil)
	d.since = r.Get("next_batch").Str
	for _, u := range r.Get("device_lists.changed").Array() {
		d.changed[u.Str] = true
	}
	for _, ev := range r.Get("to_device.events").Array() {
		d.receiveToDevice(ev)
	}
	for roomID := range r.Get("rooms.invite").Map() {
		d.invites[roomID] = true
	}
	for roomID, room := range r.Get("rooms.join").Map() {
		for _, ev := range append(room.Get("state.events").Array(), room.Get("timeline.events").Array()...) {
			switch ev.Get("type").Str {
			case "m.room.member":
				if d.members[roomID] == nil {
					d.members[roomID] = map[string]string{}
				}
				d.members[roomID][ev.Get("state_key").Str] = ev.Get("content.membership").Str
			case "m.room.encrypted":
				d.pending = append(d.pending, ev)
				d.pendRoom = append(d.pendRoom, roomID)
			}
		}
	}
	d.decryptPending()
}

// syncUntil syncs until cond holds, for at most 30 seconds.
func (d *device) syncUntil(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: timed out waiting for %s", d, what)
		}
		d.sync(time.Second)
	}
}

// receiveToDevice decrypts an Olm to-device event and takes in the room
// keys it carries. Anything that does not check out fails the test: in
// these scenarios every to-device event is meant for this device.
func (d *device) receiveToDevice(ev gjson.Result) {
	d.t.Helper()
	if ev.Get("type").Str != "m.room.encrypted" || ev.Get("content.algorithm").Str != algOlm {
		d.t.Fatalf("%s: unexpected to-device event %s", d, ev.Raw)
	}
	sender, senderKey := ev.Get("sender").Str, ev.Get("content.sender_key").Str
	mine := ev.Get("content.ciphertext." + gjson.Escape(d.curve))
	if !mine.Exists() {
		d.t.Fatalf("%s: to-device event not encrypted for this device: %s", d, ev.Raw)
	}
	msgType, body := id.OlmMsgType(mine.Get("type").Int()), mine.Get("body").Str
	plaintext, err := d.olmDecrypt(senderKey, msgType, body)
	if err != nil {
		d.t.Fatalf("%s: cannot decrypt the Olm message from %s: %v", d, sender, err)
	}
	p := gjson.ParseBytes(plaintext)
	if p.Get("sender").Str != sender || p.Get("recipient").Str != d.u.UserID ||
		p.Get("recipient_keys.ed25519").Str != d.ed {
		d.t.Fatalf("%s: Olm payload names the wrong sender or recipient: %s", d, plaintext)
	}
	from, ok := d.byCurve(sender, senderKey)
	if !ok {
		d.query(sender)
		if from, ok = d.byCurve(sender, senderKey); !ok {
			d.t.Fatalf("%s: no device of %s has the curve25519 key %s", d, sender, senderKey)
		}
	}
	if p.Get("keys.ed25519").Str != from.ed25519 || p.Get("sender_device").Str != from.deviceID {
		d.t.Fatalf("%s: Olm payload's sender keys are not those of %s/%s: %s", d, sender, from.deviceID, plaintext)
	}
	if p.Get("type").Str != "m.room_key" || p.Get("content.algorithm").Str != algMegolm {
		d.t.Fatalf("%s: unexpected Olm payload %s", d, plaintext)
	}
	sess, err := session.NewMegolmInboundSession([]byte(p.Get("content.session_key").Str))
	if err != nil {
		d.t.Fatalf("%s: bad room key: %v", d, err)
	}
	if string(sess.ID()) != p.Get("content.session_id").Str {
		d.t.Fatalf("%s: room key's session ID does not match its key", d)
	}
	d.inbound[senderKey+"|"+string(sess.ID())] = &inboundGroup{sess: sess, roomID: p.Get("content.room_id").Str, sender: from}
}

// olmDecrypt decrypts with a session with the sender's key, or starts an
// inbound session from a pre-key message (using up our one-time key).
func (d *device) olmDecrypt(senderKey string, msgType id.OlmMsgType, body string) ([]byte, error) {
	for _, sess := range d.olm[senderKey] {
		if msgType == id.OlmMsgTypePreKey {
			if ok, err := sess.MatchesInboundSessionFrom(senderKey, body); err != nil || !ok {
				continue
			}
		}
		if plaintext, err := sess.Decrypt(body, msgType); err == nil {
			return plaintext, nil
		}
	}
	if msgType != id.OlmMsgTypePreKey {
		return nil, fmt.Errorf("no Olm session with %s decrypts it", senderKey)
	}
	key := id.Curve25519(senderKey)
	sess, err := d.acct.NewInboundSessionFrom(&key, body)
	if err != nil {
		return nil, err
	}
	if err := d.acct.RemoveOneTimeKeys(sess); err != nil {
		return nil, err
	}
	plaintext, err := sess.Decrypt(body, msgType)
	if err != nil {
		return nil, err
	}
	d.olm[senderKey] = append(d.olm[senderKey], sess)
	return plaintext, nil
}

// decryptPending decrypts the room events whose session key has arrived;
// the others wait (and their last error is kept).
func (d *device) decryptPending() {
	d.t.Helper()
	var events []gjson.Result
	var rooms []string
	for i, ev := range d.pending {
		m, err := d.decryptRoomEvent(d.pendRoom[i], ev)
		if err != nil {
			d.failed[ev.Get("event_id").Str] = err
			events, rooms = append(events, ev), append(rooms, d.pendRoom[i])
			continue
		}
		delete(d.failed, m.eventID)
		d.messages = append(d.messages, m)
	}
	d.pending, d.pendRoom = events, rooms
}

func (d *device) decryptRoomEvent(roomID string, ev gjson.Result) (message, error) {
	c := ev.Get("content")
	if c.Get("algorithm").Str != algMegolm {
		return message{}, fmt.Errorf("algorithm %q", c.Get("algorithm").Str)
	}
	g := d.inbound[c.Get("sender_key").Str+"|"+c.Get("session_id").Str]
	if g == nil {
		return message{}, fmt.Errorf("no room key for session %s", c.Get("session_id").Str)
	}
	if g.roomID != roomID || g.sender.userID != ev.Get("sender").Str {
		return message{}, fmt.Errorf("room key of %s in %s used by %s in %s", g.sender.userID, g.roomID, ev.Get("sender").Str, roomID)
	}
	plaintext, _, err := g.sess.Decrypt([]byte(c.Get("ciphertext").Str))
	if err != nil {
		return message{}, err
	}
	p := gjson.ParseBytes(plaintext)
	if p.Get("room_id").Str != roomID {
		return message{}, fmt.Errorf("decrypted event claims room %q", p.Get("room_id").Str)
	}
	return message{roomID: roomID, sender: ev.Get("sender").Str, body: p.Get("content.body").Str,
		eventID: ev.Get("event_id").Str, senderDevice: g.sender}, nil
}

// decrypted reports whether the device decrypted a message with this body
// from sender in the room.
func (d *device) decrypted(roomID, sender, body string) bool {
	return slices.ContainsFunc(d.messages, func(m message) bool {
		return m.roomID == roomID && m.sender == sender && m.body == body
	})
}
