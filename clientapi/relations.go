package clientapi

import (
	"context"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/plexus-chat/plexus/internal/clientevent"
)

// Relations adds the bundled aggregations of events' children
// (unsigned.m.relations) to events the client API serves; the sync API,
// which indexes relations, implements it. events[i] is pdus[i] formatted.
type Relations interface {
	BundleAggregations(ctx context.Context, localpart string, pdus []gomatrixserverlib.PDU, events []clientevent.Event) error
}
