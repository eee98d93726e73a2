package syncapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/plexus-chat/plexus/internal/testserver"
	"github.com/plexus-chat/plexus/keyserver/keytest"
)

// uploadKeys publishes a device's identity keys, n one-time keys and a
// fallback key.
func uploadKeys(t *testing.T, s *testserver.Server, u *testserver.User, n int) {
	t.Helper()
	d := keytest.NewDevice(t, u.UserID, u.DeviceID)
	s.MustOK("POST", "/_matrix/client/v3/keys/upload", u.AccessToken, map[string]any{
		"device_keys": d.DeviceKeys(), "one_time_keys": d.OneTimeKeys(0, n), "fallback_keys": d.FallbackKey("FB"),
	})
}

func userList(r gjson.Result, path string) []string {
	var out []string
	for _, v := range r.Get(path).Array() {
		out = append(out, v.String())
	}
	return out
}

func changed(r gjson.Result) []string { return userList(r, "device_lists.changed") }
func left(r gjson.Result) []string    { return userList(r, "device_lists.left") }

// syncDeviceLists syncs (without waiting) until device_lists satisfies
// cond; room events reach the sync API asynchronously.
func syncDeviceLists(t *testing.T, s *testserver.Server, u *testserver.User, since string, cond func(gjson.Result) bool) gjson.Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := syncNow(s, u, since)
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("device lists never as wanted: %s", r.Raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// joinedSync syncs until u is joined to roomID and returns next_batch.
func joinedSync(t *testing.T, s *testserver.Server, u *testserver.User, roomID string) string {
	t.Helper()
	return syncUntil(t, s, u, "", "", func(r gjson.Result) bool {
		return r.Get("rooms.join." + gjson.Escape(roomID)).Exists()
	}).Get("next_batch").String()
}

func TestDeviceListsInSync(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		carol := s.Register("carol", "pw")
		roomID := createRoom(t, s, alice.UserID)
		setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
		bobSince := joinedSync(t, s, bob, roomID)
		carolSince := syncNow(s, carol, "").Get("next_batch").String()
		aliceSince := joinedSync(t, s, alice, roomID)

		// Initial syncs have no device lists.
		if r := syncNow(s, bob, ""); len(changed(r)) != 0 || len(left(r)) != 0 {
			t.Fatalf("initial sync with device lists: %s", r.Get("device_lists").Raw)
		}

		uploadKeys(t, s, alice, 3)
		r := syncDeviceLists(t, s, bob, bobSince, func(r gjson.Result) bool { return len(changed(r)) > 0 })
		if got := changed(r); !slices.Equal(got, []string{alice.UserID}) {
			t.Fatalf("bob's changed: %v", got)
		}
		next := r.Get("next_batch").String()
		// Seen once: the next sync does not repeat it.
		if r := syncNow(s, bob, next); len(changed(r)) != 0 {
			t.Fatalf("change repeated: %s", r.Get("device_lists").Raw)
		}
		// The user's own change is theirs to see too; a stranger's is not.
		if r := syncNow(s, alice, aliceSince); !slices.Contains(changed(r), alice.UserID) {
			t.Fatalf("alice's own change: %s", r.Get("device_lists").Raw)
		}
		if r := syncNow(s, carol, carolSince); len(changed(r)) != 0 {
			t.Fatalf("carol shares no room with alice: %s", r.Get("device_lists").Raw)
		}

		// /keys/changes between two tokens.
		kc := s.MustOK("GET", "/_matrix/client/v3/keys/changes?from="+url.QueryEscape(bobSince)+"&to="+url.QueryEscape(next), bob.AccessToken, nil)
		if got := userList(kc.JSON(), "changed"); !slices.Equal(got, []string{alice.UserID}) {
			t.Fatalf("keys/changes: %s", kc)
		}
		kc = s.MustOK("GET", "/_matrix/client/v3/keys/changes?from="+url.QueryEscape(next)+"&to="+url.QueryEscape(next), bob.AccessToken, nil)
		if len(kc.Get("changed").Array()) != 0 || !kc.Get("left").IsArray() {
			t.Fatalf("empty keys/changes: %s", kc)
		}
		s.ExpectError(400, "M_INVALID_PARAM", "GET", "/_matrix/client/v3/keys/changes?from=nonsense&to="+url.QueryEscape(next), bob.AccessToken, nil)
		s.ExpectError(400, "M_MISSING_PARAM", "GET", "/_matrix/client/v3/keys/changes?from="+url.QueryEscape(next), bob.AccessToken, nil)

		// Bob leaves: each is in the other's left, and no longer in changed.
		aliceSince = syncNow(s, alice, "").Get("next_batch").String()
		setMembership(t, s, roomID, bob.UserID, bob.UserID, "leave")
		r = syncDeviceLists(t, s, alice, aliceSince, func(r gjson.Result) bool { return len(left(r)) > 0 })
		if got := left(r); !slices.Equal(got, []string{bob.UserID}) || slices.Contains(changed(r), bob.UserID) {
			t.Fatalf("alice's device lists after bob left: %s", r.Get("device_lists").Raw)
		}
		aliceSince = r.Get("next_batch").String()
		r = syncDeviceLists(t, s, bob, next, func(r gjson.Result) bool { return len(left(r)) > 0 })
		if got := left(r); !slices.Equal(got, []string{alice.UserID}) {
			t.Fatalf("bob's device lists after leaving: %s", r.Get("device_lists").Raw)
		}
		bobSince = r.Get("next_batch").String()
		// Changes of users no longer sharing a room are not seen.
		phone := s.Login("alice", "pw")
		uploadKeys(t, s, phone, 1)
		if r := syncNow(s, bob, bobSince); len(changed(r)) != 0 {
			t.Fatalf("bob sees alice's change after leaving: %s", r.Get("device_lists").Raw)
		}

		// Sharing a room again puts the other in changed.
		setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
		r = syncDeviceLists(t, s, alice, aliceSince, func(r gjson.Result) bool { return slices.Contains(changed(r), bob.UserID) })
		if len(left(r)) != 0 {
			t.Fatalf("left and changed at once: %s", r.Get("device_lists").Raw)
		}
		r = syncDeviceLists(t, s, bob, bobSince, func(r gjson.Result) bool { return slices.Contains(changed(r), alice.UserID) })
		bobSince = r.Get("next_batch").String()

		// A deleted device is a change too.
		s.MustOK("POST", "/_matrix/client/v3/logout", phone.AccessToken, nil)
		syncDeviceLists(t, s, bob, bobSince, func(r gjson.Result) bool { return slices.Contains(changed(r), alice.UserID) })
	})
}

// TestDeviceListChangeWakesSync: a change wakes a room-mate's waiting
// sync, and a change made before the sync answers it at once.
func TestDeviceListChangeWakesSync(t *testing.T) {
	s := testserver.New(t)
	alice := s.Register("alice", "pw")
	bob := s.Register("bob", "pw")
	roomID := createRoom(t, s, alice.UserID)
	setMembership(t, s, roomID, bob.UserID, bob.UserID, "join")
	since := joinedSync(t, s, bob, roomID)
	since = syncNow(s, bob, since).Get("next_batch").String()

	type result struct {
		body    []byte
		elapsed time.Duration
		err     error
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		req, _ := http.NewRequest("GET", s.URL+"/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(since), nil)
		req.Header.Set("Authorization", "Bearer "+bob.AccessToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- result{body: body, elapsed: time.Since(start), err: err}
	}()
	time.Sleep(300 * time.Millisecond) // let the sync start waiting
	uploadKeys(t, s, alice, 1)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.elapsed > 10*time.Second || !slices.Contains(changed(gjson.ParseBytes(res.body)), alice.UserID) {
		t.Fatalf("woken after %v with %s", res.elapsed, res.body)
	}

	// A change already made answers a waiting sync at once.
	since = gjson.GetBytes(res.body, "next_batch").String()
	phone := s.Login("alice", "pw")
	uploadKeys(t, s, phone, 1)
	start := time.Now()
	r := s.MustOK("GET", "/_matrix/client/v3/sync?timeout=20000&since="+url.QueryEscape(since), bob.AccessToken, nil)
	if time.Since(start) > 10*time.Second || !slices.Contains(changed(r.JSON()), alice.UserID) {
		t.Fatalf("after %v: %s", time.Since(start), r)
	}
}

func TestKeyCountsInSync(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		alice := s.Register("alice", "pw")
		bob := s.Register("bob", "pw")
		// Before any upload the counts say zero and there is no fallback key.
		r := syncNow(s, alice, "")
		if r.Get("device_one_time_keys_count.signed_curve25519").Int() != 0 || !r.Get("device_unused_fallback_key_types").IsArray() ||
			len(r.Get("device_unused_fallback_key_types").Array()) != 0 {
			t.Fatalf("before upload: %s", r.Raw)
		}
		uploadKeys(t, s, alice, 2)
		r = syncNow(s, alice, r.Get("next_batch").String())
		if r.Get("device_one_time_keys_count.signed_curve25519").Int() != 2 ||
			userList(r, "device_unused_fallback_key_types")[0] != "signed_curve25519" {
			t.Fatalf("after upload: %s", r.Raw)
		}
		// The counts are the device's own: another device has none.
		other := s.Login("alice", "pw")
		if r := syncNow(s, other, ""); r.Get("device_one_time_keys_count.signed_curve25519").Int() != 0 {
			t.Fatalf("other device: %s", r.Raw)
		}
		claim, _ := json.Marshal(map[string]any{"one_time_keys": map[string]any{alice.UserID: map[string]string{alice.DeviceID: "signed_curve25519"}}})
		for range 3 { // two one-time keys, then the fallback key
			s.MustOK("POST", "/_matrix/client/v3/keys/claim", bob.AccessToken, claim)
		}
		r = syncNow(s, alice, r.Get("next_batch").String())
		if r.Get("device_one_time_keys_count.signed_curve25519").Int() != 0 || len(r.Get("device_unused_fallback_key_types").Array()) != 0 {
			t.Fatalf("after claims: %s", r.Raw)
		}
	})
}
