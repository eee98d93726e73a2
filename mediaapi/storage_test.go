package mediaapi

import (
	"context"
	"testing"
)

func TestJanitorDeletesOnlyOurExpiredPendingRows(t *testing.T) {
	m := newTestMediaAPI(t)
	ctx := context.Background()
	rows := []*Media{
		{ServerName: "localhost", MediaID: "expired", Uploader: "@a:localhost", CreatedTS: 1, ExpiresTS: 10},
		{ServerName: "localhost", MediaID: "waiting", Uploader: "@a:localhost", CreatedTS: 1, ExpiresTS: 1000},
		{ServerName: "localhost", MediaID: "done", Uploader: "@a:localhost", CreatedTS: 1, SHA256: "ab"},
		// Another server's media known only by a fetched thumbnail.
		{ServerName: "other.example", MediaID: "thumbonly", CreatedTS: 1},
	}
	for _, r := range rows {
		if err := m.store.insertMedia(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.store.deleteExpiredPending(ctx, "localhost", 500); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		got, err := m.store.media(ctx, r.ServerName, r.MediaID)
		if err != nil {
			t.Fatal(err)
		}
		if wantGone := r.MediaID == "expired"; (got == nil) != wantGone {
			t.Errorf("%s: present %v, want %v", r.MediaID, got != nil, !wantGone)
		}
	}
}
