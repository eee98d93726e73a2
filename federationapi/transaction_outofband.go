package federationapi

import (
	"context"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

// A local user who knocked on, or was invited to, a room this server is
// not in holds that membership out of band: we have no state of the room
// to check events against, and the room's servers will not show us its
// history (we have no joined user). When the room ends it (a knock
// refused, an invite withdrawn, a ban) the resident server sends us the
// event about our user, as the sender does for the server of the user a
// membership event is about. We take it out of band too, as we take
// invites: it is signed by the origin, whose user sent it, and can only
// end our user's pending membership; an invite only its inviter may
// withdraw.

// outOfBandEnd takes a leave or ban of a local user whose invite or knock
// we hold out of band in a room none of our users is joined to. handled
// is false for every other event, which goes the usual way.
func (h *TransactionHandler) outOfBandEnd(ctx context.Context, origin spec.ServerName, pdu gomatrixserverlib.PDU) (handled bool, err error) {
	if pdu.Type() != spec.MRoomMember || pdu.StateKey() == nil || userServerName(*pdu.StateKey()) != h.self ||
		userServerName(string(pdu.SenderID())) != origin {
		return false, nil
	}
	if m, err := pdu.Membership(); err != nil || (m != spec.Leave && m != spec.Ban) {
		return false, nil
	}
	roomID := pdu.RoomID().String()
	current, err := h.rs.Membership(ctx, roomID, *pdu.StateKey())
	if err != nil || (current.Membership != spec.Invite && current.Membership != spec.Knock) {
		return false, nil
	}
	servers, err := h.rs.ResidentServers(ctx, roomID)
	if err != nil || slices.Contains(servers, string(h.self)) {
		return false, nil
	}
	if current.Membership == spec.Invite {
		// Only the inviter withdraws an invite this way: another member
		// could be anyone the room's server vouches for (Complement's
		// "Non-invitee user cannot rescind invite over federation").
		invite, err := h.rs.StoredEvents(ctx, []string{current.EventID})
		if err != nil {
			return true, h.outcome(rsapi.InputResult{}, err, pdu)
		}
		if ev := invite[current.EventID]; ev == nil || ev.SenderID() != pdu.SenderID() {
			return true, pduErrorf("Only the inviter may withdraw an invite to a room this server is not in")
		}
	}
	if err := h.rs.InputOutOfBandMembership(ctx, pdu); err != nil {
		return true, h.outcome(rsapi.InputResult{}, err, pdu)
	}
	return true, nil
}
