package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestMediaCommandQuarantinesAndDeletes(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	s := start(t, dataDir)
	defer s.stop(t)
	status, body := post(t, s.url+"/_matrix/client/v3/register", map[string]any{
		"username": "alice", "password": "pw", "auth": map[string]string{"type": "m.login.dummy"},
	})
	if status != 200 {
		t.Fatalf("register: %d %v", status, body)
	}
	req, _ := http.NewRequest("POST", s.url+"/_matrix/media/v3/upload", strings.NewReader("some file"))
	req.Header.Set("Authorization", "Bearer "+body["access_token"].(string))
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var up struct {
		ContentURI string `json:"content_uri"`
	}
	json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	uri := up.ContentURI
	download := s.url + "/_matrix/media/v3/download/" + strings.TrimPrefix(uri, "mxc://")
	get := func() (int, []byte) {
		resp, err := http.Get(download)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := get(); code != 200 || !bytes.Equal(b, []byte("some file")) {
		t.Fatalf("download: %d %s", code, b)
	}
	for _, step := range []struct {
		action string
		want   int
	}{{"quarantine", 404}, {"unquarantine", 200}, {"delete", 404}} {
		if out, err := plexus(t, nil, "media", step.action, "--data-dir", dataDir, uri); err != nil {
			t.Fatalf("media %s: %v\n%s", step.action, err, out)
		}
		if code, b := get(); code != step.want {
			t.Fatalf("after %s: %d %s", step.action, code, b)
		}
	}
	if out, err := plexus(t, nil, "media", "delete", "--data-dir", dataDir, uri); err == nil || !strings.Contains(out, "not known") {
		t.Fatalf("deleting twice: %v\n%s", err, out)
	}
	if out, err := plexus(t, nil, "media", "delete", "--data-dir", dataDir, "mxc://localhost/../etc"); err == nil {
		t.Fatalf("bad mxc accepted:\n%s", out)
	}
}
