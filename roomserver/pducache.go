package roomserver

import "github.com/plexus-chat/plexus/internal/pducache"

// parsedPDUs keeps parsed stored events (internal/pducache): the auth
// events of a room are read again for every event sent into it.
var parsedPDUs = pducache.New(8192)
