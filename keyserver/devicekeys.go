package keyserver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
)

// Key algorithms of one-time and fallback keys this server accepts.
const (
	algSignedCurve25519 = "signed_curve25519"
	algCurve25519       = "curve25519" // an unsigned key: a bare string
)

// What /keys/upload checks. The spec asks the device to sign its keys
// ("The JSON object must include the public part of the device's Ed25519
// key, and must be signed by that key", end-to-end encryption module,
// Uploading keys) and the clients that download them to verify them; of
// the server it asks only that user_id and device_id "Must match the user
// ID [device ID] used when logging in" (DeviceKeys), and /keys/upload
// defines no error response. So the server checks the owner and the
// shape of what is there (fields of the right JSON types, key IDs of the
// form <algorithm>:<id>, one fallback key per algorithm, a different key
// under a known one-time key ID refused), but neither signatures, nor
// the encoding of the keys, nor the algorithms, nor that algorithms,
// keys and signatures are there at all: SyTest's upload helper sends
// device_keys with user_id and device_id only, test suites and clients
// upload placeholder keys, and a self-signature proves nothing the
// downloading client does not check itself. Other servers' lists
// (devicelists.go) are checked the same way.

// deviceKeys is the part of a device_keys object the server checks.
type deviceKeys struct {
	UserID     string                       `json:"user_id"`
	DeviceID   string                       `json:"device_id"`
	Algorithms []string                     `json:"algorithms"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// parsedDeviceKeys are checked device keys ready to store.
type parsedDeviceKeys struct {
	canonical []byte
	ed25519   string
}

// validKeyID reports whether id is <algorithm>:<key ID>, both non-empty.
func validKeyID(id string) bool {
	alg, rest, ok := strings.Cut(id, ":")
	return ok && alg != "" && rest != ""
}

// parseDeviceKeys checks device keys: they are the device's own and
// have the spec's shape as far as they go.
func parseDeviceKeys(raw json.RawMessage, userID, deviceID string) (*parsedDeviceKeys, error) {
	canonical, err := canonicalObject(raw)
	if err != nil {
		return nil, newErr(CodeInvalidParam, "device_keys: %v", err)
	}
	var dk deviceKeys
	if err := json.Unmarshal(canonical, &dk); err != nil {
		return nil, newErr(CodeInvalidParam, "device_keys: %v", err)
	}
	if dk.UserID != userID {
		return nil, newErr(CodeInvalidParam, "device_keys.user_id must be %s", userID)
	}
	if dk.DeviceID != deviceID {
		return nil, newErr(CodeInvalidParam, "device_keys.device_id must be %s", deviceID)
	}
	for id := range dk.Keys {
		if !validKeyID(id) {
			return nil, newErr(CodeInvalidParam, "device_keys.keys: key ID %q is not algorithm:device_id", id)
		}
	}
	// May be "": then signatures by the device do not verify (crosssigning.go).
	ed := dk.Keys["ed25519:"+deviceID]
	return &parsedDeviceKeys{canonical: canonical, ed25519: ed}, nil
}

// oneTimeKey is a checked one-time or fallback key.
type oneTimeKey struct {
	keyID, algorithm string
	canonical        []byte
}

// parseOneTimeKeys checks the key IDs and formats of one-time or
// fallback keys (field names the request field for errors): a
// signed_curve25519 key is an object with a key and signatures, a
// curve25519 key a string, a key of another algorithm either.
func parseOneTimeKeys(keys map[string]json.RawMessage, field string) ([]oneTimeKey, error) {
	out := make([]oneTimeKey, 0, len(keys))
	for _, keyID := range sortedKeys(keys) {
		if !validKeyID(keyID) {
			return nil, newErr(CodeInvalidParam, "%s: key ID %q is not algorithm:key_id", field, keyID)
		}
		alg, _, _ := strings.Cut(keyID, ":")
		raw := keys[keyID]
		k := oneTimeKey{keyID: keyID, algorithm: alg}
		var s string
		isString := json.Unmarshal(raw, &s) == nil
		switch {
		case alg == algSignedCurve25519 || (alg != algCurve25519 && !isString):
			canonical, err := canonicalObject(raw)
			if err != nil {
				return nil, newErr(CodeInvalidParam, "%s.%s: %v", field, keyID, err)
			}
			var obj struct {
				Key        *string                      `json:"key"`
				Signatures map[string]map[string]string `json:"signatures"`
			}
			if err := json.Unmarshal(canonical, &obj); err != nil {
				return nil, newErr(CodeInvalidParam, "%s.%s: %v", field, keyID, err)
			}
			if alg == algSignedCurve25519 && (obj.Key == nil || *obj.Key == "" || obj.Signatures == nil) {
				return nil, newErr(CodeInvalidParam, "%s.%s: a signed key has a key and signatures", field, keyID)
			}
			k.canonical = canonical
		case isString && s != "":
			k.canonical, _ = json.Marshal(s)
		default:
			return nil, newErr(CodeInvalidParam, "%s.%s: a %s key is a non-empty string", field, keyID, alg)
		}
		out = append(out, k)
	}
	return out, nil
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// UploadKeys implements API.
func (k *KeyServer) UploadKeys(ctx context.Context, req UploadRequest) (map[string]int, error) {
	var dk *parsedDeviceKeys
	if !isNull(req.DeviceKeys) {
		var err error
		if dk, err = parseDeviceKeys(req.DeviceKeys, req.UserID, req.DeviceID); err != nil {
			return nil, err
		}
	}
	otks, err := parseOneTimeKeys(req.OneTimeKeys, "one_time_keys")
	if err != nil {
		return nil, err
	}
	fallbacks, err := parseOneTimeKeys(req.FallbackKeys, "fallback_keys")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, f := range fallbacks {
		if seen[f.algorithm] {
			return nil, newErr(CodeInvalidParam, "fallback_keys: at most one key per algorithm")
		}
		seen[f.algorithm] = true
	}
	var counts map[string]int
	defer k.counts.changed(req.UserID, req.DeviceID)
	err = k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		var stored []byte
		var storedJSON, ed string
		err := tx.QueryRowContext(ctx, sqlSelectDeviceKey, req.UserID, req.DeviceID).Scan(&storedJSON, &ed)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if err == nil {
			stored = []byte(storedJSON)
		}
		if dk != nil && !bytes.Equal(stored, dk.canonical) {
			if _, err := tx.ExecContext(ctx, sqlUpsertDeviceKeys, req.UserID, req.DeviceID, string(dk.canonical), dk.ed25519, ""); err != nil {
				return err
			}
			if stored != nil && !sameSignedPart(stored, dk.canonical) {
				// New identity keys: signatures of the old ones do not carry over.
				if _, err := tx.ExecContext(ctx, sqlDeleteTargetSigs, req.UserID, req.DeviceID); err != nil {
					return err
				}
			}
			if err := c.record(ctx, tx, req.UserID, req.DeviceID, false); err != nil {
				return err
			}
		}
		if err := k.storeOneTimeKeys(ctx, tx, req.UserID, req.DeviceID, otks); err != nil {
			return err
		}
		for _, f := range fallbacks {
			var keyID, js string
			err := tx.QueryRowContext(ctx, sqlSelectFallback, req.UserID, req.DeviceID, f.algorithm).Scan(&keyID, &js)
			if err == nil && keyID == f.keyID && js == string(f.canonical) {
				continue // the same key again: it stays used if it was
			}
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			if _, err := tx.ExecContext(ctx, sqlUpsertFallback, req.UserID, req.DeviceID, f.algorithm, f.keyID, string(f.canonical)); err != nil {
				return err
			}
		}
		counts, err = otkCounts(ctx, tx, req.UserID, req.DeviceID)
		return err
	})
	if err != nil {
		return nil, err
	}
	return counts, nil
}

// storeOneTimeKeys adds new one-time keys. A key ID already held with the
// same key is ignored; with a different key it is an error (the spec's
// M_INVALID_PARAM), and nothing of the upload is kept.
func (k *KeyServer) storeOneTimeKeys(ctx context.Context, tx *sql.Tx, userID, deviceID string, otks []oneTimeKey) error {
	var seq int64
	for _, key := range otks {
		var js string
		err := tx.QueryRowContext(ctx, sqlSelectOTK, userID, deviceID, key.keyID).Scan(&js)
		if err == nil {
			if js != string(key.canonical) {
				return newErr(CodeInvalidParam, "one_time_keys: %s is already uploaded with different content", key.keyID)
			}
			continue
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if seq == 0 {
			// All keys of one upload share a position in the claim order.
			if err := tx.QueryRowContext(ctx, sqlAdvanceStream, streamOTKUpload).Scan(&seq); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, sqlInsertOTK, userID, deviceID, key.keyID, key.algorithm, string(key.canonical), seq); err != nil {
			return err
		}
	}
	return nil
}

func otkCounts(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, userID, deviceID string) (map[string]int, error) {
	rows, err := q.QueryContext(ctx, sqlCountOTKs, userID, deviceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	// Clients decide whether to upload from signed_curve25519's count, so
	// it is always there.
	counts := map[string]int{algSignedCurve25519: 0}
	for rows.Next() {
		var alg string
		var n int
		if err := rows.Scan(&alg, &n); err != nil {
			return nil, err
		}
		counts[alg] = n
	}
	return counts, rows.Err()
}

// KeyCounts implements API.
func (k *KeyServer) KeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	counts, unused, gen, ok := k.counts.get(userID, deviceID)
	if ok {
		return counts, unused, nil
	}
	counts, unused, err := k.readKeyCounts(ctx, userID, deviceID)
	if err == nil {
		k.counts.put(userID, deviceID, gen, counts, unused)
	}
	return counts, unused, err
}

func (k *KeyServer) readKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error) {
	counts, err := otkCounts(ctx, k.db.Reader(), userID, deviceID)
	if err != nil {
		return nil, nil, err
	}
	rows, err := k.db.Reader().QueryContext(ctx, sqlUnusedFallbacks, userID, deviceID)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	unused := []string{}
	for rows.Next() {
		var alg string
		if err := rows.Scan(&alg); err != nil {
			return nil, nil, err
		}
		unused = append(unused, alg)
	}
	return counts, unused, rows.Err()
}

// QueryKeys implements API.
func (k *KeyServer) QueryKeys(ctx context.Context, requester string, query map[string][]string) (*QueryResponse, error) {
	resp := &QueryResponse{
		DeviceKeys: map[string]map[string]json.RawMessage{}, MasterKeys: map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{}, UserSigningKeys: map[string]json.RawMessage{},
		Failures: map[string]any{},
	}
	remote := map[string]map[string][]string{} // server -> user -> devices
	for _, userID := range sortedKeys(query) {
		devices := query[userID]
		if localpart, ok := k.localpart(userID); ok {
			if err := k.queryUser(ctx, requester, userID, localpart, devices, resp); err != nil {
				return nil, err
			}
			continue
		}
		server := serverOf(userID)
		if server == "" || requester == "" {
			// Not a user ID: unknown, so left out. Another server asks
			// only about our users.
			continue
		}
		if remote[server] == nil {
			remote[server] = map[string][]string{}
		}
		remote[server][userID] = devices
	}
	// From the cache or the users' servers (remote.go).
	if err := k.queryRemote(ctx, requester, remote, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// mergeRemoteQuery copies a server's answer into resp, keeping only its
// own users (a server cannot speak for others).
func mergeRemoteQuery(resp, r *QueryResponse, server string) {
	if r == nil {
		return
	}
	for u, devs := range r.DeviceKeys {
		if serverOf(u) == server {
			resp.DeviceKeys[u] = devs
		}
	}
	for _, m := range []struct{ dst, src map[string]json.RawMessage }{
		{resp.MasterKeys, r.MasterKeys}, {resp.SelfSigningKeys, r.SelfSigningKeys},
	} {
		for u, key := range m.src {
			if serverOf(u) == server {
				m.dst[u] = key
			}
		}
	}
}

// queryUser adds one user's keys to resp: local users (localpart set)
// with the devices that still exist and their names, remote users from
// the cache.
func (k *KeyServer) queryUser(ctx context.Context, requester, userID, localpart string, wanted []string, resp *QueryResponse) error {
	var names map[string]string // local devices that exist -> display name
	if localpart != "" {
		devs, err := k.accounts.Devices(ctx, localpart)
		if err != nil {
			return err
		}
		names = make(map[string]string, len(devs))
		for _, d := range devs {
			names[d.DeviceID] = d.DisplayName
		}
	}
	want := map[string]bool{}
	for _, d := range wanted {
		want[d] = true
	}
	sigs, err := k.signaturesOfUser(ctx, userID)
	if err != nil {
		return err
	}
	rows, err := k.db.Reader().QueryContext(ctx, sqlSelectDeviceKeys, userID)
	if err != nil {
		return err
	}
	devices := map[string]json.RawMessage{}
	for rows.Next() {
		var deviceID, js, remoteName string
		if err := rows.Scan(&deviceID, &js, &remoteName); err != nil {
			rows.Close()
			return err
		}
		if len(want) > 0 && !want[deviceID] {
			continue
		}
		name := remoteName
		if names != nil {
			n, exists := names[deviceID]
			if !exists {
				continue // deleted device whose keys were not dropped yet
			}
			name = n
		}
		var unsigned map[string]any
		if name != "" {
			unsigned = map[string]any{"device_display_name": name}
		}
		// Signatures of devices come only from the owner's self-signing key.
		devices[deviceID] = withSignatures([]byte(js), sigs.by(deviceID, userID, userID), unsigned)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	resp.DeviceKeys[userID] = devices

	cs, err := k.crossSigningKeys(ctx, k.db.Reader(), userID)
	if err != nil {
		return err
	}
	if m, ok := cs[purposeMaster]; ok {
		// Signatures of a master key: the owner's (devices), and the
		// requester's own user-signing key's; others' stay private.
		resp.MasterKeys[userID] = withSignatures(m.json, sigs.by(m.pub, userID, requester), nil)
	}
	if s, ok := cs[purposeSelfSigning]; ok {
		resp.SelfSigningKeys[userID] = json.RawMessage(s.json)
	}
	if u, ok := cs[purposeUserSigning]; ok && requester == userID {
		resp.UserSigningKeys[userID] = json.RawMessage(u.json)
	}
	return nil
}

// userSignatures are the uploaded signatures of one user's keys:
// target key ID -> origin user -> origin key ID -> signature.
type userSignatures map[string]signatures

// by returns the signatures of target made by the given users ("" never
// matches).
func (s userSignatures) by(target string, users ...string) signatures {
	out := signatures{}
	for origin, keys := range s[target] {
		for _, u := range users {
			if u != "" && u == origin {
				out[origin] = keys
			}
		}
	}
	return out
}

const sqlSignaturesOfUser = `SELECT target_key_id, origin_user_id, origin_key_id, signature
	FROM keyserver_signatures WHERE target_user_id = $1`

func (k *KeyServer) signaturesOfUser(ctx context.Context, userID string) (userSignatures, error) {
	rows, err := k.db.Reader().QueryContext(ctx, sqlSignaturesOfUser, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := userSignatures{}
	for rows.Next() {
		var target, origin, keyID, sig string
		if err := rows.Scan(&target, &origin, &keyID, &sig); err != nil {
			return nil, err
		}
		if out[target] == nil {
			out[target] = signatures{}
		}
		if out[target][origin] == nil {
			out[target][origin] = map[string]string{}
		}
		out[target][origin][keyID] = sig
	}
	return out, rows.Err()
}

// ClaimKeys implements API.
func (k *KeyServer) ClaimKeys(ctx context.Context, requester string, query map[string]map[string]string) (*ClaimResponse, error) {
	resp := &ClaimResponse{OneTimeKeys: map[string]map[string]map[string]json.RawMessage{}, Failures: map[string]any{}}
	remote := map[string]map[string]map[string]string{}
	for _, userID := range sortedKeys(query) {
		if _, ok := k.localpart(userID); !ok {
			// One-time keys are never cached: they are claimed from the
			// user's server.
			if server := serverOf(userID); server != "" && requester != "" {
				if remote[server] == nil {
					remote[server] = map[string]map[string]string{}
				}
				remote[server][userID] = query[userID]
			}
			continue
		}
		for _, deviceID := range sortedKeys(query[userID]) {
			keyID, js, ok, err := k.claimOne(ctx, userID, deviceID, query[userID][deviceID])
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			if resp.OneTimeKeys[userID] == nil {
				resp.OneTimeKeys[userID] = map[string]map[string]json.RawMessage{}
			}
			resp.OneTimeKeys[userID][deviceID] = map[string]json.RawMessage{keyID: json.RawMessage(js)}
		}
	}
	k.claimRemote(ctx, remote, resp) // remote.go
	return resp, nil
}

// claimOne takes the oldest one-time key of a device for an algorithm, or
// its fallback key (marked used) when none is left. Each DELETE removes a
// key at most once, so two claims never get the same key: the one that
// loses the race finds nothing to delete and looks again. Every lost race
// means another claim took a key, so the loop ends.
func (k *KeyServer) claimOne(ctx context.Context, userID, deviceID, alg string) (keyID, js string, ok bool, err error) {
	defer k.counts.changed(userID, deviceID)
	w := k.db.Writer()
	for {
		if err := ctx.Err(); err != nil {
			return "", "", false, err
		}
		err := w.QueryRowContext(ctx, sqlOldestOTK, userID, deviceID, alg).Scan(&keyID)
		if errors.Is(err, sql.ErrNoRows) {
			break
		}
		if err != nil {
			return "", "", false, err
		}
		err = w.QueryRowContext(ctx, sqlClaimOTK, userID, deviceID, keyID).Scan(&js)
		if err == nil {
			return keyID, js, true, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return "", "", false, err
		}
	}
	err = w.QueryRowContext(ctx, sqlSelectFallback, userID, deviceID, alg).Scan(&keyID, &js)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, err
	}
	if _, err := w.ExecContext(ctx, sqlUseFallback, userID, deviceID, alg); err != nil {
		return "", "", false, err
	}
	return keyID, js, true, nil
}

// DeleteDeviceKeys implements API.
func (k *KeyServer) DeleteDeviceKeys(ctx context.Context, userID string, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	defer k.counts.changed(userID, deviceIDs...)
	return k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		for _, id := range deviceIDs {
			if err := deleteDevice(ctx, tx, c, userID, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// DeleteAllDeviceKeys implements API.
func (k *KeyServer) DeleteAllDeviceKeys(ctx context.Context, userID, exceptDeviceID string) error {
	var deleted []string
	defer func() { k.counts.changed(userID, deleted...) }()
	return k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		rows, err := tx.QueryContext(ctx, sqlDeviceIDsWithKeys, userID)
		if err != nil {
			return err
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			if id != exceptDeviceID {
				ids = append(ids, id)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		deleted = append(deleted, ids...)
		for _, id := range ids {
			if err := deleteDevice(ctx, tx, c, userID, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// deleteDevice drops a device's keys and the signatures of them, and
// records the change when the device had published keys.
func deleteDevice(ctx context.Context, tx *sql.Tx, c *changes, userID, deviceID string) error {
	res, err := tx.ExecContext(ctx, sqlDeleteDeviceKeys, userID, deviceID)
	if err != nil {
		return err
	}
	for _, q := range []string{sqlDeleteOTKs, sqlDeleteFallbacks, sqlDeleteTargetSigs} {
		if _, err := tx.ExecContext(ctx, q, userID, deviceID); err != nil {
			return err
		}
	}
	// Its signatures of the user's master key go with it.
	if _, err := tx.ExecContext(ctx, sqlDeleteOriginSigs, userID, "ed25519:"+deviceID); err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n > 0 {
		return c.record(ctx, tx, userID, deviceID, true)
	}
	return nil
}
