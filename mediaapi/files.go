package mediaapi

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
)

// fileStore keeps content on disk named by its SHA-256, so identical
// uploads share one file: <root>/<2 hex>/<2 hex>/<64 hex>. Incoming files
// are written to <root>/tmp while hashed, then renamed into place.
type fileStore struct{ root string }

var errTooLarge = errors.New("mediaapi: content too large")

func newFileStore(root string) (*fileStore, error) {
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("media storage %s: %w", root, err)
	}
	return &fileStore{root: root}, nil
}

// path is where the file with this hash lives. The hash is checked to be
// 64 hex digits, so a stored value can never name another path.
func (f *fileStore) path(sha string) (string, error) {
	if len(sha) != 64 {
		return "", fmt.Errorf("mediaapi: bad content hash %q", sha)
	}
	if _, err := hex.DecodeString(sha); err != nil {
		return "", fmt.Errorf("mediaapi: bad content hash %q", sha)
	}
	return filepath.Join(f.root, sha[0:2], sha[2:4], sha), nil
}

// open opens the file with this hash.
func (f *fileStore) open(sha string) (*os.File, error) {
	p, err := f.path(sha)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// write streams r to disk while hashing it, refusing more than limit
// bytes (errTooLarge), and returns the content's hash and size. The whole
// content is never held in memory.
func (f *fileStore) write(r io.Reader, limit int64) (sha string, size int64, err error) {
	tmp, err := os.CreateTemp(filepath.Join(f.root, "tmp"), "upload-*")
	if err != nil {
		return "", 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	size, err = io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, limit+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return "", 0, errTooLarge
		}
		return "", 0, err
	}
	if size > limit {
		return "", 0, errTooLarge
	}
	if err = tmp.Sync(); err != nil {
		return "", 0, err
	}
	if err = tmp.Close(); err != nil {
		return "", 0, err
	}
	sha = hex.EncodeToString(h.Sum(nil))
	dst, err := f.path(sha)
	if err != nil {
		return "", 0, err
	}
	if err = os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", 0, err
	}
	if _, statErr := os.Stat(dst); statErr == nil {
		// Already stored: deduplicated.
		os.Remove(tmp.Name())
		return sha, size, nil
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return "", 0, err
	}
	return sha, size, nil
}

// remove deletes the file with this hash; a missing file is not an error.
func (f *fileStore) remove(sha string) error {
	p, err := f.path(sha)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
