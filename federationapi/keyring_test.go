package federationapi

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/plexus-chat/plexus/internal/config"
	"github.com/plexus-chat/plexus/internal/signingkey"
	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func testOwnKeys(t *testing.T) *ownKeys {
	t.Helper()
	key, err := signingkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	oldPub, _, _ := ed25519.GenerateKey(rand.Reader)
	own, err := newOwnKeys("self.example", key, 7*24*time.Hour, []config.OldSigningKey{{
		KeyID: "ed25519:old", PublicKey: spec.Base64Bytes(oldPub).Encode(), ExpiredTS: 1_600_000_000_000,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return own
}

func TestOwnKeysResponse(t *testing.T) {
	own := testOwnKeys(t)
	now := time.Now()
	raw, err := own.response(now)
	if err != nil {
		t.Fatal(err)
	}
	var keys gomatrixserverlib.ServerKeys
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	if checks, _ := gomatrixserverlib.CheckKeys("self.example", now, keys); !checks.AllChecksOK {
		t.Fatalf("our key response fails the checks: %+v\n%s", checks, raw)
	}
	if got := keys.ValidUntilTS.Time(); got.Before(now.Add(7*24*time.Hour-time.Second)) || got.After(now.Add(7*24*time.Hour+time.Second)) {
		t.Fatalf("valid_until_ts %v, want a week from now", got)
	}
	if old, ok := keys.OldVerifyKeys["ed25519:old"]; !ok || old.ExpiredTS != 1_600_000_000_000 {
		t.Fatalf("old_verify_keys: %s", raw)
	}
	// The signed answer is reused for a while, then made again.
	again, _ := own.response(now.Add(time.Minute))
	later, _ := own.response(now.Add(2 * time.Hour))
	if string(again) != string(raw) || string(later) == string(raw) {
		t.Fatal("the signed response should be reused for an hour, then renewed")
	}

	key, _ := signingkey.Generate()
	if _, err := newOwnKeys("x", key, time.Hour, []config.OldSigningKey{{KeyID: key.ID, PublicKey: spec.Base64Bytes(own.public).Encode(), ExpiredTS: 1}}); err == nil {
		t.Fatal("the current key listed as old should be refused")
	}
}

func TestKeyDatabase(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		if err := db.Migrate(ctx, component, migrations); err != nil {
			t.Fatal(err)
		}
		own := testOwnKeys(t)
		d := newKeyDatabase(own, keyStore{db: db})
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		other := lookupRequest{ServerName: "other.example", KeyID: "ed25519:a"}
		mine := lookupRequest{ServerName: "self.example", KeyID: own.keyID}
		mineOld := lookupRequest{ServerName: "self.example", KeyID: "ed25519:old"}
		reqs := map[lookupRequest]spec.Timestamp{other: 0, mine: 0, mineOld: 0, {ServerName: "self.example", KeyID: "ed25519:nope"}: 0}

		got, err := d.FetchKeys(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[mine].ValidUntilTS < spec.AsTimestamp(time.Now().Add(time.Hour)) || got[mineOld].ExpiredTS == 0 {
			t.Fatalf("before storing: %+v", got)
		}

		stored := lookupResult{VerifyKey: gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(pub)}, ValidUntilTS: 2000}
		if err := d.StoreKeys(ctx, map[lookupRequest]lookupResult{other: stored, mine: stored}); err != nil {
			t.Fatal(err)
		}
		got, _ = d.FetchKeys(ctx, reqs)
		if got[other].ValidUntilTS != 2000 || string(got[other].Key) != string(pub) {
			t.Fatalf("stored key read back as %+v", got[other])
		}
		if string(got[mine].Key) != string(own.public) {
			t.Fatal("our own key was overwritten")
		}

		// A staler answer does not shorten a key's validity; an expiry
		// always lands.
		older := stored
		older.ValidUntilTS = 1000
		_ = d.StoreKeys(ctx, map[lookupRequest]lookupResult{other: older})
		fresh := newKeyDatabase(own, keyStore{db: db}) // no memory cache
		if got, _ := fresh.FetchKeys(ctx, reqs); got[other].ValidUntilTS != 2000 {
			t.Fatalf("validity shortened to %d", got[other].ValidUntilTS)
		}
		expired := lookupResult{VerifyKey: stored.VerifyKey, ExpiredTS: 1500}
		_ = d.StoreKeys(ctx, map[lookupRequest]lookupResult{other: expired})
		if got, _ := d.FetchKeys(ctx, reqs); got[other].ExpiredTS != 1500 {
			t.Fatalf("expiry not stored: %+v", got[other])
		}

		// Key responses for the notary: the last one is kept.
		store := keyStore{db: db}
		if r, err := store.keyResponse(ctx, "other.example"); r != nil || err != nil {
			t.Fatalf("no response yet: %v %v", r, err)
		}
		for _, raw := range []string{`{"a":1}`, `{"a":2}`} {
			if err := store.storeKeyResponse(ctx, "other.example", keyResponse{ValidUntil: 20, Fetched: 10, Raw: []byte(raw)}); err != nil {
				t.Fatal(err)
			}
		}
		r, err := store.keyResponse(ctx, "other.example")
		if err != nil || r == nil || string(r.Raw) != `{"a":2}` || r.ValidUntil != 20 || r.Fetched != 10 {
			t.Fatalf("stored response read back as %+v, %v", r, err)
		}
	})
}

func TestKeyResponseServable(t *testing.T) {
	raw := []byte(`{"server_name":"a","verify_keys":{"ed25519:k":{"key":"AAAA"}},"old_verify_keys":{"ed25519:o":{"key":"AAAA","expired_ts":1}},"valid_until_ts":3000}`)
	c := keyResponse{Fetched: 1000, ValidUntil: 3000, Raw: raw}
	at := func(ms int64) time.Time { return time.UnixMilli(ms) }
	cases := []struct {
		now  int64
		q    notaryQuery
		want bool
	}{
		{1500, notaryQuery{minValidUntil: 1500}, true},
		{2000, notaryQuery{minValidUntil: 1500}, false}, // past half its life
		{1500, notaryQuery{minValidUntil: 3001}, false}, // not valid long enough
		{1500, notaryQuery{minValidUntil: 1500, keyIDs: []gomatrixserverlib.KeyID{"ed25519:k", "ed25519:o"}}, true},
		{1500, notaryQuery{minValidUntil: 1500, keyIDs: []gomatrixserverlib.KeyID{"ed25519:new"}}, false},
	}
	for i, tc := range cases {
		if got := c.servable(at(tc.now), tc.q); got != tc.want {
			t.Errorf("case %d: servable = %v, want %v", i, got, tc.want)
		}
	}
}
