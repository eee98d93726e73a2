package federationapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/roomserver/testroom"
)

// txOrigin is a homeserver played by the test: its rooms are testroom
// graphs, it serves its key and the read endpoints a receiver of its
// transactions calls (/get_missing_events, /state_ids, /state, /event,
// /event_auth), takes transactions and sends its own, signed. It is named
// "localhost:<port>", so that the real servers ("127.0.0.1:<port>") and
// it fall under different server ACL entries.
type txOrigin struct {
	t    *testing.T
	name spec.ServerName
	key  *testroom.Server
	ca   *testserver.CA
	srv  *httptest.Server

	rooms []*testroom.Room

	mu sync.Mutex
	// noMissingEvents makes /get_missing_events answer with no events.
	noMissingEvents bool
	calls           map[string]int
	received        []gjson.Result // transactions sent to us
}

func newTxOrigin(t *testing.T, ca *testserver.CA) *txOrigin {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	name := fmt.Sprintf("localhost:%d", port)
	f := &txOrigin{t: t, name: spec.ServerName(name), key: testroom.NewServer(t, name), ca: ca, srv: srv, calls: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/key/v2/server", f.serveKeys)
	mux.HandleFunc("POST /_matrix/federation/v1/get_missing_events/{roomID}", f.serveMissingEvents)
	mux.HandleFunc("GET /_matrix/federation/v1/state_ids/{roomID}", f.serveState(true))
	mux.HandleFunc("GET /_matrix/federation/v1/state/{roomID}", f.serveState(false))
	mux.HandleFunc("GET /_matrix/federation/v1/event/{eventID}", f.serveEvent)
	mux.HandleFunc("GET /_matrix/federation/v1/event_auth/{roomID}/{eventID}", f.serveEventAuth)
	mux.HandleFunc("PUT /_matrix/federation/v1/send/{txnID}", f.serveSend)
	srv.Config.Handler = mux
	certFile, keyFile := ca.Issue(t, "localhost")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return f
}

func (f *txOrigin) count(endpoint string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[endpoint]
}

func (f *txOrigin) hit(endpoint string) {
	f.mu.Lock()
	f.calls[endpoint]++
	f.mu.Unlock()
}

func txWriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (f *txOrigin) serveKeys(w http.ResponseWriter, r *http.Request) {
	raw, _ := json.Marshal(map[string]any{
		"server_name":     f.name,
		"valid_until_ts":  time.Now().Add(24 * time.Hour).UnixMilli(),
		"verify_keys":     map[string]any{string(f.key.KeyID): map[string]string{"key": spec.Base64Bytes(f.key.PublicKey).Encode()}},
		"old_verify_keys": map[string]any{},
	})
	signed, err := gomatrixserverlib.SignJSON(string(f.name), f.key.KeyID, f.key.PrivateKey, raw)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(signed)
}

// event finds an event of the fake's rooms.
func (f *txOrigin) event(id string) (gomatrixserverlib.PDU, *testroom.Room) {
	for _, room := range f.rooms {
		for _, ev := range room.Events() {
			if ev.EventID() == id {
				return ev, room
			}
		}
	}
	return nil, nil
}

func (f *txOrigin) room(id string) *testroom.Room {
	for _, room := range f.rooms {
		if room.ID() == id {
			return room
		}
	}
	return nil
}

func txRawEvents(evs []gomatrixserverlib.PDU) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, ev := range evs {
		out[i] = ev.JSON()
	}
	return out
}

func txEventIDs(evs []gomatrixserverlib.PDU) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID()
	}
	return out
}

// serveMissingEvents walks back from latest_events along prev_events,
// never into earliest_events, and answers oldest first.
func (f *txOrigin) serveMissingEvents(w http.ResponseWriter, r *http.Request) {
	f.hit("get_missing_events")
	var req fclient.MissingEvents
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	f.mu.Lock()
	none := f.noMissingEvents
	f.mu.Unlock()
	room := f.room(r.PathValue("roomID"))
	if room == nil || none {
		txWriteJSON(w, map[string]any{"events": []any{}})
		return
	}
	stop := map[string]bool{}
	for _, id := range append(slices.Clone(req.EarliestEvents), req.LatestEvents...) {
		stop[id] = true
	}
	var queue []string
	for _, id := range req.LatestEvents {
		if ev, _ := f.event(id); ev != nil {
			queue = append(queue, ev.PrevEventIDs()...)
		}
	}
	var found []gomatrixserverlib.PDU
	for len(queue) > 0 && len(found) < req.Limit {
		id := queue[0]
		queue = queue[1:]
		if stop[id] {
			continue
		}
		stop[id] = true
		ev, _ := f.event(id)
		if ev == nil || ev.Depth() < int64(req.MinDepth) {
			continue
		}
		found = append(found, ev)
		queue = append(queue, ev.PrevEventIDs()...)
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].Depth() < found[j].Depth() })
	txWriteJSON(w, map[string]any{"events": txRawEvents(found)})
}

// serveState answers /state_ids (ids) or /state with the state before an
// event and its auth chain.
func (f *txOrigin) serveState(ids bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ids {
			f.hit("state_ids")
		} else {
			f.hit("state")
		}
		ev, room := f.event(r.URL.Query().Get("event_id"))
		if ev == nil || room.ID() != r.PathValue("roomID") {
			http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no such event"}`, 404)
			return
		}
		state := room.StateBefore(ev.EventID()).Events()
		chain, _ := room.AuthChain(context.Background(), txEventIDs(state))
		if ids {
			txWriteJSON(w, map[string]any{"pdu_ids": txEventIDs(state), "auth_chain_ids": txEventIDs(chain)})
			return
		}
		txWriteJSON(w, map[string]any{"pdus": txRawEvents(state), "auth_chain": txRawEvents(chain)})
	}
}

func (f *txOrigin) serveEvent(w http.ResponseWriter, r *http.Request) {
	f.hit("event")
	ev, _ := f.event(r.PathValue("eventID"))
	if ev == nil {
		http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no such event"}`, 404)
		return
	}
	txWriteJSON(w, map[string]any{"origin": f.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{ev.JSON()}})
}

func (f *txOrigin) serveEventAuth(w http.ResponseWriter, r *http.Request) {
	f.hit("event_auth")
	ev, room := f.event(r.PathValue("eventID"))
	if ev == nil || room.ID() != r.PathValue("roomID") {
		http.Error(w, `{"errcode":"M_NOT_FOUND","error":"no such event"}`, 404)
		return
	}
	chain, _ := room.AuthChain(context.Background(), []string{ev.EventID()})
	txWriteJSON(w, map[string]any{"auth_chain": txRawEvents(chain)})
}

func (f *txOrigin) serveSend(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.received = append(f.received, gjson.ParseBytes(body))
	f.mu.Unlock()
	txWriteJSON(w, map[string]any{"pdus": map[string]any{}})
}

// sendTxn sends a transaction, signed, to a real server and returns the
// status and body of the answer.
func (f *txOrigin) sendTxn(to *testserver.Server, txnID string, pdus []json.RawMessage, edus []any) (int, gjson.Result) {
	f.t.Helper()
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	content := map[string]any{"origin": f.name, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus}
	if edus != nil {
		content["edus"] = edus
	}
	return f.signedRequest(to, http.MethodPut, "/_matrix/federation/v1/send/"+url.PathEscape(txnID), content)
}

func (f *txOrigin) signedRequest(to *testserver.Server, method, path string, content any) (int, gjson.Result) {
	f.t.Helper()
	req := fclient.NewFederationRequest(method, f.name, spec.ServerName(to.ServerName()), path)
	if err := req.SetContent(content); err != nil {
		f.t.Fatal(err)
	}
	if err := req.Sign(f.name, f.key.KeyID, f.key.PrivateKey); err != nil {
		f.t.Fatal(err)
	}
	hreq, err := req.HTTPRequest()
	if err != nil {
		f.t.Fatal(err)
	}
	hreq.URL.Scheme, hreq.URL.Host = "https", to.Server.TLSAddr
	resp, err := f.ca.HTTPClient().Do(hreq)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, gjson.ParseBytes(bytes.TrimSpace(body))
}

// edu is an EDU as it travels in a transaction.
func txEDU(eduType string, content any) map[string]any {
	return map[string]any{"edu_type": eduType, "content": content}
}
