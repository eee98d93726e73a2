package syncapi

import (
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
)

// latestEdit picks the replacement the m.replace aggregation of original
// shows: the most recent valid one (by origin_server_ts, then the
// lexicographically largest event ID), nil when there is none. Validity
// follows the spec's "Validity of replacement events": same room, sender
// and type, neither a state event, the original not itself an edit, and
// the replacement carrying m.new_content. An encrypted replacement keeps
// m.new_content in its ciphertext, where the server cannot check it. A
// redacted original shows no edits at all.
func latestEdit(original gomatrixserverlib.PDU, candidates []gomatrixserverlib.PDU) gomatrixserverlib.PDU {
	if original.Redacted() || original.StateKey() != nil {
		return nil
	}
	if _, rel, ok := relationOf(original.Content()); ok && rel == relReplace {
		return nil
	}
	var best gomatrixserverlib.PDU
	for _, c := range candidates {
		if !validEdit(original, c) {
			continue
		}
		if best == nil || c.OriginServerTS() > best.OriginServerTS() ||
			(c.OriginServerTS() == best.OriginServerTS() && c.EventID() > best.EventID()) {
			best = c
		}
	}
	return best
}

// validEdit checks one replacement against its original.
func validEdit(original, edit gomatrixserverlib.PDU) bool {
	if edit.Redacted() || edit.StateKey() != nil {
		return false
	}
	parent, rel, ok := relationOf(edit.Content())
	if !ok || rel != relReplace || parent != original.EventID() {
		return false
	}
	if edit.RoomID().String() != original.RoomID().String() || edit.SenderID() != original.SenderID() || edit.Type() != original.Type() {
		return false
	}
	if edit.Type() == "m.room.encrypted" {
		return true
	}
	return gjson.GetBytes(edit.Content(), `m\.new_content`).IsObject()
}
