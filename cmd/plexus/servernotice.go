package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// server-notice sends a server notice through the running server's admin
// API (POST /_plexus/admin/v1/server_notice) rather than writing to the
// database itself: the roomserver must be the only writer of room
// history, and SQLite has one writer.
func serverNotice(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plexus server-notice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://localhost:8008", "the running server's client API")
	token := fs.String("token", "", "an admin's access token (default $PLEXUS_ADMIN_TOKEN)")
	user := fs.String("user", "", "the local user to notify, @name:server (required)")
	body := fs.String("body", "", "the notice's text (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" {
		*token = os.Getenv("PLEXUS_ADMIN_TOKEN")
	}
	if *user == "" || *body == "" || *token == "" {
		return errors.New("server-notice needs --user, --body and an admin token (--token or PLEXUS_ADMIN_TOKEN)")
	}
	payload, _ := json.Marshal(map[string]any{"user_id": *user, "content": map[string]any{"msgtype": "m.server_notice", "body": *body}})
	req, err := http.NewRequest(http.MethodPost, strings.TrimRight(*url, "/")+"/_plexus/admin/v1/server_notice", bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*token)
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var answer struct {
		RoomID  string `json:"room_id"`
		EventID string `json:"event_id"`
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&answer); err != nil {
		return fmt.Errorf("server answered %d without JSON", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("server answered %d %s: %s", resp.StatusCode, answer.Errcode, answer.Error)
	}
	fmt.Fprintf(stdout, "Sent %s in %s\n", answer.EventID, answer.RoomID)
	return nil
}
