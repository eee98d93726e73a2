package federationapi

import (
	"errors"

	"github.com/matrix-org/gomatrixserverlib"
)

// parseUntrusted parses an event from another server (hashes checked,
// redacted on a mismatch). Older room versions counted the 255 limit of
// a type or state key in code points, not bytes: gomatrixserverlib
// reports such an event as invalid but persistable, and we keep it, as
// the servers that made it did, rather than break the room's history.
func parseUntrusted(verImpl gomatrixserverlib.IRoomVersion, raw []byte) (gomatrixserverlib.PDU, error) {
	pdu, err := verImpl.NewEventFromUntrustedJSON(raw)
	var verr gomatrixserverlib.EventValidationError
	if errors.As(err, &verr) && verr.Persistable && pdu != nil {
		return pdu, nil
	}
	return pdu, err
}
