package searchapi

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

// consumerName is the indexer's row in searchapi_position.
const consumerName = "roomserver_output"

// maxIndexedText bounds the text kept per event (events are at most 64 KiB).
const maxIndexedText = 64 << 10

// The keys a client may search, and the search_key each event's text is
// filed under.
const (
	keyBody  = "content.body"
	keyName  = "content.name"
	keyTopic = "content.topic"
)

// indexBatch indexes a batch of output events and stores the new position,
// in one transaction.
func (s *SearchAPI) indexBatch(ctx context.Context, batch []rsapi.OutputEvent) error {
	return s.db.WithTx(ctx, func(tx *sql.Tx) error {
		for _, out := range batch {
			if err := s.index(ctx, tx, out); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, sqlSetPosition, consumerName, batch[len(batch)-1].Position)
		return err
	})
}

// index files one event: its position in the room's timeline, then its
// text, or the change it makes to another event's text (edits and
// redactions).
func (s *SearchAPI) index(ctx context.Context, tx *sql.Tx, out rsapi.OutputEvent) error {
	ev := out.Event
	if _, err := tx.ExecContext(ctx, sqlInsertTimeline, out.RoomID, out.Position, ev.EventID()); err != nil {
		return err
	}
	if ev.Type() == spec.MRoomRedaction {
		return s.applyRedaction(ctx, tx, ev.Redacts())
	}
	content := gjson.ParseBytes(ev.Content())
	if rel := content.Get(`m\.relates_to`); rel.Get("rel_type").String() == "m.replace" {
		// An edit is not a result of its own: it changes what its
		// original is found by.
		return s.applyEdit(ctx, tx, ev, rel.Get("event_id").String(), content.Get(`m\.new_content`))
	}
	key, text := searchableText(ev.Type(), ev.StateKey(), content)
	if text == "" {
		return nil
	}
	var id int64
	err := tx.QueryRowContext(ctx, sqlInsertDoc, ev.EventID(), out.RoomID, string(ev.SenderID()), ev.Type(), key,
		out.Position, text).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) { // indexed already
		return nil
	}
	if err != nil {
		return err
	}
	return s.fts.indexDoc(ctx, tx, id, text)
}

// searchableText returns the key and text an event is found by, or "".
func searchableText(evType string, stateKey *string, content gjson.Result) (key, text string) {
	switch {
	case evType == "m.room.message":
		key, text = keyBody, content.Get("body").String()
	case evType == "m.room.name" && stateKey != nil && *stateKey == "":
		key, text = keyName, content.Get("name").String()
	case evType == "m.room.topic" && stateKey != nil && *stateKey == "":
		// The plain topic, and the text/plain representations of m.topic.
		parts := []string{content.Get("topic").String()}
		content.Get(`m\.topic.m\.text`).ForEach(func(_, v gjson.Result) bool {
			if mime := v.Get("mimetype").String(); mime == "" || mime == "text/plain" {
				if b := v.Get("body").String(); b != parts[0] {
					parts = append(parts, b)
				}
			}
			return true
		})
		key, text = keyTopic, strings.TrimSpace(strings.Join(parts, " "))
	}
	if len(text) > maxIndexedText {
		text = strings.ToValidUTF8(text[:maxIndexedText], "")
	}
	return key, strings.TrimSpace(text)
}

// applyEdit makes the original event findable by the edit's new text,
// when the edit comes from the original's sender in the same room (as the
// spec requires of valid edits). Edits of events not indexed (yet) are
// ignored.
func (s *SearchAPI) applyEdit(ctx context.Context, tx *sql.Tx, edit gomatrixserverlib.PDU, originalID string, newContent gjson.Result) error {
	if originalID == "" || !newContent.IsObject() {
		return nil
	}
	var id int64
	var roomID, sender, key, oldText string
	err := tx.QueryRowContext(ctx, sqlDocByEvent, originalID).Scan(&id, &roomID, &sender, &key, &oldText)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if roomID != edit.RoomID().String() || sender != string(edit.SenderID()) || key != keyBody {
		return nil
	}
	_, text := searchableText("m.room.message", nil, newContent)
	if text == "" || text == oldText {
		return nil
	}
	if err := s.fts.unindexDoc(ctx, tx, id, oldText); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, sqlUpdateDoc, id, text); err != nil {
		return err
	}
	return s.fts.indexDoc(ctx, tx, id, text)
}

// applyRedaction removes a redacted event from the index. The roomserver
// decides whether a redaction takes effect (the redacter's power, room
// version rules), so the event is dropped only once its stored copy no
// longer has the text it was indexed by.
func (s *SearchAPI) applyRedaction(ctx context.Context, tx *sql.Tx, targetID string) error {
	if targetID == "" {
		return nil
	}
	var id int64
	var roomID, sender, key, oldText string
	err := tx.QueryRowContext(ctx, sqlDocByEvent, targetID).Scan(&id, &roomID, &sender, &key, &oldText)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	target, err := s.rs.Event(ctx, targetID)
	if err == nil {
		_, text := searchableText(target.Type(), target.StateKey(), gjson.ParseBytes(target.Content()))
		if text != "" {
			return nil // the redaction did not apply
		}
	} else if !errors.Is(err, rsapi.ErrEventNotFound) {
		return err
	}
	if err := s.fts.unindexDoc(ctx, tx, id, oldText); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, sqlDeleteDoc, id)
	return err
}
