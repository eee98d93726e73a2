package mediaapi_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/plexus-chat/plexus/internal/testserver"
)

func TestAdminQuarantineAndDelete(t *testing.T) {
	testserver.ForEachDatabase(t, func(t *testing.T, s *testserver.Server) {
		if _, err := s.Server.Accounts.CreateAccount(t.Context(), "root", "password1234", true, false); err != nil {
			t.Fatal(err)
		}
		admin := s.Login("root", "password1234")
		alice := s.Register("alice", "password1234")
		body := encodePNG(t, gradient(120, 100))
		path := mxcPath(t, upload(t, s, alice.AccessToken, "image/png", "", body))
		// A second ID for the same content shares its file.
		twin := mxcPath(t, upload(t, s, alice.AccessToken, "image/png", "", body))
		adminPath := "/_plexus/admin/v1/media/" + path
		// Let the background thumbnails (32x32 and 96x96 crop of each)
		// finish, so that the file check at the end sees a quiet store.
		waitForThumbnails(t, s, 4)
		dl := s.URL + "/_matrix/client/v1/media/download/" + path

		s.ExpectError(403, "M_FORBIDDEN", "POST", adminPath+"/quarantine", alice.AccessToken, struct{}{})
		s.ExpectError(403, "M_FORBIDDEN", "DELETE", adminPath, alice.AccessToken, nil)

		s.MustOK("POST", adminPath+"/quarantine", admin.AccessToken, struct{}{})
		for _, u := range []string{dl, s.URL + "/_matrix/media/v3/download/" + path, thumbnailURL(s, true, path, 32, 32, "crop")} {
			if r := do(t, "GET", u, alice.AccessToken, "", nil); r.Status != http.StatusNotFound || r.errcode() != "M_NOT_FOUND" {
				t.Fatalf("quarantined %s: %d %s", u, r.Status, r.Body)
			}
		}
		s.MustOK("POST", adminPath+"/unquarantine", admin.AccessToken, struct{}{})
		if r := do(t, "GET", dl, alice.AccessToken, "", nil); r.Status != http.StatusOK {
			t.Fatalf("unquarantined: %d", r.Status)
		}

		s.MustOK("DELETE", adminPath, admin.AccessToken, nil)
		if r := do(t, "GET", dl, alice.AccessToken, "", nil); r.Status != http.StatusNotFound {
			t.Fatalf("deleted: %d", r.Status)
		}
		s.ExpectError(404, "M_NOT_FOUND", "DELETE", adminPath, admin.AccessToken, nil)
		// The twin still has its content: the shared file stayed.
		if r := do(t, "GET", s.URL+"/_matrix/client/v1/media/download/"+twin, alice.AccessToken, "", nil); r.Status != http.StatusOK {
			t.Fatalf("twin after delete: %d", r.Status)
		}
		s.MustOK("DELETE", "/_plexus/admin/v1/media/"+twin, admin.AccessToken, nil)
		// With both gone, no content file is left (thumbnails included).
		var files []string
		filepath.Walk(filepath.Join(s.Config.DataDir, "media"), func(p string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() && filepath.Base(filepath.Dir(p)) != "tmp" {
				files = append(files, p)
			}
			return nil
		})
		if len(files) != 0 {
			t.Fatalf("files left after deleting all media: %v", files)
		}
	})
}

// waitForThumbnails waits until the server holds n thumbnail rows.
func waitForThumbnails(t *testing.T, s *testserver.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got int
		if err := s.Server.DB.Reader().QueryRowContext(t.Context(), "SELECT COUNT(*) FROM mediaapi_thumbnails").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d thumbnails, want %d", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
