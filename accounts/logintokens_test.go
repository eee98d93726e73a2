package accounts

import (
	"context"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/storage"
	"github.com/plexus-chat/plexus/storage/storagetest"
)

func TestLoginTokens(t *testing.T) {
	storagetest.ForEach(t, func(t *testing.T, db *storage.DB) {
		ctx := context.Background()
		a := newTest(t, db, 0)
		mustCreate(t, a, "alice", "pw")
		token, err := a.CreateLoginToken(ctx, "Alice", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if who, err := a.ConsumeLoginToken(ctx, token); err != nil || who != "alice" {
			t.Fatalf("consume: %q, %v", who, err)
		}
		_, err = a.ConsumeLoginToken(ctx, token)
		wantErr(t, "second use", err, ErrUnknownToken)
		expired, err := a.CreateLoginToken(ctx, "alice", -time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.ConsumeLoginToken(ctx, expired)
		wantErr(t, "expired", err, ErrUnknownToken)
		later, _ := a.CreateLoginToken(ctx, "alice", time.Minute)
		if err := a.Deactivate(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		_, err = a.ConsumeLoginToken(ctx, later)
		wantErr(t, "deactivated", err, ErrDeactivated)
	})
}
