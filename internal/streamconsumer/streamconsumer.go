// Package streamconsumer runs the loop that components use to follow the
// roomserver's output stream from a position they store themselves: read
// a batch after the position, hand it over, wait for more. The component
// stores the new position in the same transaction as the changes the
// batch made, so a restart resumes exactly where it stopped.
package streamconsumer

import (
	"context"
	"sync"
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

// Gather is how long Run lets new entries gather after a wake before it
// reads them. Its consumers work in the background (search, the user
// directory): batching a burst costs them nothing a user notices, and
// keeps their reads and writes out of the way while a send is being
// delivered to the clients waiting for it.
const Gather = 50 * time.Millisecond

// Progress tells how far a Run has consumed, for readers that must see
// what was committed before they asked (search right after a message).
type Progress struct {
	mu    sync.Mutex
	pos   int64
	moved chan struct{} // closed and replaced when pos moves
	hurry chan struct{} // closed and replaced when a reader waits
}

// NewProgress starts at the consumer's stored position.
func NewProgress(start int64) *Progress {
	return &Progress{pos: start, moved: make(chan struct{}), hurry: make(chan struct{})}
}

// Set records that everything up to pos is consumed; Run calls it, and
// consumers with their own loop (Loop) call it themselves.
func (p *Progress) Set(pos int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pos = pos
	close(p.moved)
	p.moved = make(chan struct{})
}

// WaitFor returns once everything up to target is consumed, ctx ends or
// max passes. It cuts the consumer's Gather short.
func (p *Progress) WaitFor(ctx context.Context, target int64, max time.Duration) {
	timer := time.NewTimer(max)
	defer timer.Stop()
	for {
		p.mu.Lock()
		pos, moved := p.pos, p.moved
		close(p.hurry)
		p.hurry = make(chan struct{})
		p.mu.Unlock()
		if pos >= target {
			return
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		}
	}
}

func (p *Progress) hurried() <-chan struct{} {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hurry
}

// Run consumes from position start until ctx ends, after a wake waiting
// Gather for more entries (less when a reader waits on progress). A
// failing batch is retried after a pause (the handler's transaction
// rolled back, so it sees the same batch again). progress, when not nil,
// follows the consumed position.
func Run(ctx context.Context, stream Stream, start int64, handle Handler, log *logrus.Entry, progress *Progress) {
	pos := start
	loop(ctx, Gather, progress.hurried, func(ctx context.Context) (int, error) {
		batch, err := stream.OutputSince(ctx, pos, BatchSize)
		if err != nil || len(batch) == 0 {
			return 0, err
		}
		if err := handle(ctx, batch); err != nil {
			return 0, err
		}
		pos = batch[len(batch)-1].Position
		if progress != nil {
			progress.Set(pos)
		}
		return len(batch), nil
	}, func() <-chan struct{} { return stream.Notify(pos) }, log, "consuming room events")
}

// Loop is the loop of every durable stream consumer, for those that keep
// their position and batches themselves: step takes one batch and says how
// many entries it took; after an empty one the loop waits for notify's
// channel (taken anew each time), after an error for a second, until ctx
// ends. what names the work in the error log.
func Loop(ctx context.Context, step func(context.Context) (int, error), notify func() <-chan struct{}, log *logrus.Entry, what string) {
	loop(ctx, 0, nil, step, notify, log, what)
}

// loop is Loop, waiting gather after each wake unless hurry's channel
// closes first.
func loop(ctx context.Context, gather time.Duration, hurry func() <-chan struct{}, step func(context.Context) (int, error), notify func() <-chan struct{}, log *logrus.Entry, what string) {
	for {
		n, err := step(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.WithError(err).Error(what + " failed; retrying")
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		if n > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-notify():
		}
		if gather > 0 {
			var h <-chan struct{}
			if hurry != nil {
				h = hurry()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(gather):
			case <-h:
			}
		}
	}
}
