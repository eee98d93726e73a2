package bench

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/plexus-chat/plexus/internal/testserver"
)

// BenchmarkFederatedJoin measures a user of a server that is not yet in a
// room joining it over federation (POST /join with server_name, which
// runs make_join and send_join against the room's server), for rooms of
// 100, 1,000 and 10,000 members: the joining server receives, verifies
// (signatures, hashes, auth chain) and stores the whole state. Each
// iteration starts a fresh joining server (outside the timer), so every
// join is a first join; ns/op is the time until POST /join answers. The
// 10,000-member room is built in setup (about a minute), so this runs only
// under -bench:
//
//	go test -run '^$' -bench FederatedJoin -benchtime 3x -timeout 30m ./internal/bench/
func BenchmarkFederatedJoin(b *testing.B) {
	ca := testserver.NewCA(b)
	origin := testserver.NewTLS(b, ca)
	oc := NewClient(origin.URL)
	owner := mustRegister(b, oc, "owner")
	roomID := mustCreateRoom(b, oc, owner)
	members := 1
	joiners := 0
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			growRoom(b, origin, roomID, &members, n)
			b.ReportAllocs()
			b.ResetTimer()
			defer profile(b)()
			for b.Loop() {
				b.StopTimer()
				joiners++
				joining := testserver.NewTLS(b, ca)
				jc := NewClient(joining.URL)
				u := mustRegister(b, jc, fmt.Sprintf("joiner%d", joiners))
				path := "/_matrix/client/v3/join/" + url.PathEscape(roomID) + "?server_name=" + url.QueryEscape(origin.ServerName())
				b.StartTimer()
				if err := jc.Do(benchCtx, "POST", path, u.AccessToken, map[string]any{}, nil); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				members++
				// The joining server holds the whole membership.
				if got, err := jc.JoinedCount(benchCtx, u, roomID); err != nil || got != members {
					og, _ := oc.JoinedCount(benchCtx, owner, roomID)
					b.Fatalf("joined members on the joining server: %d, %v; want %d (origin has %d)", got, err, members, og)
				}
				joining.Stop()
				waitForSync(b, origin)
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/join")
		})
	}
}
