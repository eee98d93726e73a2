// Package streamconsumer runs the loop that components use to follow the
// roomserver's output stream from a position they store themselves: read
// a batch after the position, hand it over, wait for more. The component
// stores the new position in the same transaction as the changes the
// batch made, so a restart resumes exactly where it stopped.
package streamconsumer

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// Stream is the part of the roomserver a consumer reads.
type Stream interface {
	OutputSince(ctx context.Context, position int64, limit int) ([]rsapi.OutputEvent, error)
	Notify(position int64) <-chan struct{}
}

// Handler takes a batch of output events in stream order and stores what
// it made of them together with the position of the last one.
type Handler func(ctx context.Context, batch []rsapi.OutputEvent) error

// BatchSize is how many events one Handler call receives at most.
const BatchSize = 100

// Run consumes from position start until ctx ends. A failing batch is
// retried after a pause (the handler's transaction rolled back, so it
// sees the same batch again).
func Run(ctx context.Context, stream Stream, start int64, handle Handler, log *logrus.Entry) {
	pos := start
	for {
		batch, err := stream.OutputSince(ctx, pos, BatchSize)
		if err == nil && len(batch) > 0 {
			err = handle(ctx, batch)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.WithError(err).Error("consuming room events failed; retrying")
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		if len(batch) > 0 {
			pos = batch[len(batch)-1].Position
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-stream.Notify(pos):
		}
	}
}
