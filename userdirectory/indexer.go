package userdirectory

import (
	"context"
	"database/sql"
	"errors"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	rsapi "github.com/plexus-chat/plexus/roomserver/api"
)

const consumerName = "roomserver_output"

// indexBatch applies a batch of output events and stores the new position,
// in one transaction.
func (d *Directory) indexBatch(ctx context.Context, batch []rsapi.OutputEvent) error {
	return d.db.WithTx(ctx, func(tx *sql.Tx) error {
		for _, out := range batch {
			if err := d.apply(ctx, tx, out); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, sqlSetPosition, consumerName, batch[len(batch)-1].Position)
		return err
	})
}

// apply follows the room's current state: only events that enter it
// (AddsState) count, so an event that lost state resolution, or arrived
// in a fork, changes nothing. The work is per state change, not per room.
func (d *Directory) apply(ctx context.Context, tx *sql.Tx, out rsapi.OutputEvent) error {
	for _, id := range out.AddsState {
		ev := out.Event
		if id != ev.EventID() { // state that entered through a fork
			got, err := d.rs.Event(ctx, id)
			if errors.Is(err, rsapi.ErrEventNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			ev = got.PDU
		}
		if err := d.applyState(ctx, tx, out.RoomID, ev); err != nil {
			return err
		}
	}
	return nil
}

func (d *Directory) applyState(ctx context.Context, tx *sql.Tx, roomID string, ev gomatrixserverlib.PDU) error {
	sk := ev.StateKey()
	if sk == nil {
		return nil
	}
	content := gjson.ParseBytes(ev.Content())
	switch ev.Type() {
	case spec.MRoomJoinRules:
		if *sk == "" {
			_, err := tx.ExecContext(ctx, sqlSetJoinRule, roomID, content.Get("join_rule").String())
			return err
		}
	case spec.MRoomHistoryVisibility:
		if *sk == "" {
			_, err := tx.ExecContext(ctx, sqlSetHistoryVisibility, roomID, content.Get("history_visibility").String())
			return err
		}
	case spec.MRoomMember:
		userID := *sk
		if content.Get("membership").String() != spec.Join {
			_, err := tx.ExecContext(ctx, sqlRemoveMember, roomID, userID)
			return err
		}
		if _, err := tx.ExecContext(ctx, sqlAddMember, roomID, userID, strings.HasSuffix(userID, ":"+d.serverName)); err != nil {
			return err
		}
		return d.setProfile(ctx, tx, userID, stringField(content, "displayname"), stringField(content, "avatar_url"))
	}
	return nil
}

// setProfile records a user's profile as their newest join event shows it.
func (d *Directory) setProfile(ctx context.Context, tx *sql.Tx, userID, displayName, avatarURL string) error {
	if _, err := tx.ExecContext(ctx, sqlUpsertProfile, userID, displayName, avatarURL); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, sqlDeleteWords, userID); err != nil {
		return err
	}
	for _, w := range userWords(userID, displayName) {
		if _, err := tx.ExecContext(ctx, sqlInsertWord, userID, w); err != nil {
			return err
		}
	}
	return nil
}

func stringField(content gjson.Result, key string) string {
	if v := content.Get(key); v.Type == gjson.String {
		return v.String()
	}
	return ""
}
