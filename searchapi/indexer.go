package searchapi

import (
	"context"
	"database/sql"
	"errors"
	"strings"

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
		return s.recordEdit(ctx, tx, out, rel.Get("event_id").String(), content.Get(`m\.new_content`))
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
	if err := s.fts.indexDoc(ctx, tx, id, text); err != nil {
		return err
	}
	if key == keyBody { // an edit may have come first (federation)
		return s.refreshText(ctx, tx, ev.EventID())
	}
	return nil
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

// recordEdit keeps an edit's new text and lets its original be found by
// it. Edits of events not indexed (yet) wait in searchapi_edits.
func (s *SearchAPI) recordEdit(ctx context.Context, tx *sql.Tx, out rsapi.OutputEvent, originalID string, newContent gjson.Result) error {
	if originalID == "" || !newContent.IsObject() {
		return nil
	}
	_, text := searchableText("m.room.message", nil, newContent)
	if text == "" {
		return nil
	}
	ev := out.Event
	if _, err := tx.ExecContext(ctx, sqlInsertEdit, ev.EventID(), originalID, out.RoomID, string(ev.SenderID()),
		out.Position, text); err != nil {
		return err
	}
	return s.refreshText(ctx, tx, originalID)
}

// refreshText sets the text a message is found by: that of its newest
// edit from the same sender in the same room (the spec's valid edits),
// else its own.
func (s *SearchAPI) refreshText(ctx context.Context, tx *sql.Tx, eventID string) error {
	var id int64
	var roomID, sender, key, text, ownText string
	err := tx.QueryRowContext(ctx, sqlDocByEvent, eventID).Scan(&id, &roomID, &sender, &key, &text, &ownText)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil || key != keyBody {
		return err
	}
	want := ownText
	err = tx.QueryRowContext(ctx, sqlNewestEdit, eventID, roomID, sender).Scan(&want)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if want == text {
		return nil
	}
	if err := s.fts.unindexDoc(ctx, tx, id, text); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, sqlUpdateDoc, id, want); err != nil {
		return err
	}
	return s.fts.indexDoc(ctx, tx, id, want)
}

// applyRedaction removes a redacted event from the index, or, for a
// redacted edit, takes its text back from its original. The roomserver
// decides whether a redaction takes effect (the redacter's power, room
// version rules), so nothing changes until its stored copy of the event
// has lost its text.
func (s *SearchAPI) applyRedaction(ctx context.Context, tx *sql.Tx, targetID string) error {
	if targetID == "" {
		return nil
	}
	var id int64
	var text string
	err := tx.QueryRowContext(ctx, sqlDocByEvent, targetID).Scan(&id, new(string), new(string), new(string), &text, new(string))
	isDoc := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM searchapi_edits WHERE edit_id = $1`, targetID).Scan(&n); err != nil {
		return err
	}
	if !isDoc && n == 0 {
		return nil // never indexed: nothing to undo
	}
	target, err := s.rs.Event(ctx, targetID)
	if err == nil {
		if _, left := searchableText(target.Type(), target.StateKey(), gjson.ParseBytes(target.Content())); left != "" {
			return nil // the redaction did not apply
		}
	} else if !errors.Is(err, rsapi.ErrEventNotFound) {
		return err
	}
	if n > 0 {
		var originalID string
		if err := tx.QueryRowContext(ctx, sqlDeleteEdit, targetID).Scan(&originalID); err != nil {
			return err
		}
		if err := s.refreshText(ctx, tx, originalID); err != nil {
			return err
		}
	}
	if !isDoc {
		return nil
	}
	if err := s.fts.unindexDoc(ctx, tx, id, text); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, sqlDeleteDoc, id)
	return err
}
