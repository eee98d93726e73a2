package keyserver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
)

// Purposes of cross-signing keys, as in their "usage".
const (
	purposeMaster      = "master"
	purposeSelfSigning = "self_signing"
	purposeUserSigning = "user_signing"
)

type storedCrossSigning struct {
	pub  string
	json []byte
}

type querier interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}

// crossSigningKeys reads a user's cross-signing keys by purpose.
func (k *KeyServer) crossSigningKeys(ctx context.Context, q querier, userID string) (map[string]storedCrossSigning, error) {
	rows, err := q.QueryContext(ctx, sqlSelectCrossSigning, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]storedCrossSigning{}
	for rows.Next() {
		var purpose, pub, js string
		if err := rows.Scan(&purpose, &pub, &js); err != nil {
			return nil, err
		}
		out[purpose] = storedCrossSigning{pub: pub, json: []byte(js)}
	}
	return out, rows.Err()
}

type newCrossSigningKey struct {
	purpose, pub string
	canonical    []byte
}

// UploadCrossSigningKeys implements API.
func (k *KeyServer) UploadCrossSigningKeys(ctx context.Context, userID string, up CrossSigningUpload, authenticated bool) error {
	var keys []newCrossSigningKey
	var master *newCrossSigningKey
	for _, p := range []struct {
		purpose string
		raw     json.RawMessage
	}{{purposeMaster, up.MasterKey}, {purposeSelfSigning, up.SelfSigningKey}, {purposeUserSigning, up.UserSigningKey}} {
		if isNull(p.raw) {
			continue
		}
		pub, canonical, err := parseCrossSigningKey(p.raw, userID, p.purpose)
		if err != nil {
			return err
		}
		nk := newCrossSigningKey{purpose: p.purpose, pub: pub, canonical: canonical}
		keys = append(keys, nk)
		if p.purpose == purposeMaster {
			master = &nk
		}
	}
	// Cross-signing keys share the key ID namespace with devices.
	deviceIDs := map[string]bool{}
	if localpart, ok := k.localpart(userID); ok {
		devs, err := k.accounts.Devices(ctx, localpart)
		if err != nil {
			return err
		}
		for _, d := range devs {
			deviceIDs[d.DeviceID] = true
		}
	}
	return k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		existing, err := k.crossSigningKeys(ctx, tx, userID)
		if err != nil {
			return err
		}
		unchanged := true
		for _, nk := range keys {
			if e, ok := existing[nk.purpose]; !ok || !bytes.Equal(e.json, nk.canonical) {
				unchanged = false
			}
		}
		oldMaster, hadMaster := existing[purposeMaster]
		if !hadMaster && master == nil {
			return newErr(CodeMissingParam, "No master signing key is available")
		}
		if unchanged {
			return nil // the same keys again (a retried request): nothing to do
		}
		masterPub := oldMaster.pub
		if master != nil {
			masterPub = master.pub
		}
		for _, nk := range keys {
			if nk.purpose == purposeMaster {
				continue
			}
			if err := verify(nk.canonical, userID, "ed25519:"+masterPub, masterPub); err != nil {
				return newErr(CodeInvalidSignature, "the %s key is not signed by the master key", nk.purpose)
			}
		}
		for _, nk := range keys {
			inUse := deviceIDs[nk.pub]
			if !inUse {
				var js, ed string
				err := tx.QueryRowContext(ctx, sqlSelectDeviceKey, userID, nk.pub).Scan(&js, &ed)
				if err != nil && !errors.Is(err, sql.ErrNoRows) {
					return err
				}
				inUse = err == nil
			}
			if inUse {
				return newErr(CodeForbidden, "Key ID in use: a device has the ID %s", nk.pub)
			}
		}
		if hadMaster && !authenticated {
			return ErrAuthRequired
		}
		if master != nil && hadMaster && oldMaster.pub != master.pub {
			// A new identity: signatures of the old master key are void, and
			// so are the old subkeys it signed, unless uploaded again.
			if _, err := tx.ExecContext(ctx, sqlDeleteTargetSigs, userID, oldMaster.pub); err != nil {
				return err
			}
			for _, p := range []string{purposeSelfSigning, purposeUserSigning} {
				old, had := existing[p]
				if !had || slicesContainPurpose(keys, p) {
					continue
				}
				if err := dropCrossSigningKey(ctx, tx, userID, p, old.pub); err != nil {
					return err
				}
			}
		}
		for _, nk := range keys {
			if old, had := existing[nk.purpose]; had && old.pub != nk.pub {
				// Signatures the replaced key made go with it.
				if _, err := tx.ExecContext(ctx, sqlDeleteOriginSigs, userID, "ed25519:"+old.pub); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, sqlUpsertCrossSigning, userID, nk.purpose, nk.pub, string(nk.canonical)); err != nil {
				return err
			}
		}
		return c.record(ctx, tx, userID, "", false)
	})
}

func slicesContainPurpose(keys []newCrossSigningKey, purpose string) bool {
	for _, k := range keys {
		if k.purpose == purpose {
			return true
		}
	}
	return false
}

func dropCrossSigningKey(ctx context.Context, tx *sql.Tx, userID, purpose, pub string) error {
	if _, err := tx.ExecContext(ctx, sqlDeleteCrossSigning, userID, purpose); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, sqlDeleteOriginSigs, userID, "ed25519:"+pub)
	return err
}

// UploadSignatures implements API. Accepted are signatures by signer of:
// its own devices' keys by its self-signing key; its own master key by
// its devices; other users' master keys by its user-signing key. Each
// signature is verified; every key gets its own failure.
func (k *KeyServer) UploadSignatures(ctx context.Context, signer string, signed map[string]map[string]json.RawMessage) (map[string]map[string]*Error, error) {
	var failures map[string]map[string]*Error
	err := k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		failures = map[string]map[string]*Error{}
		fail := func(user, keyID string, e *Error) {
			if failures[user] == nil {
				failures[user] = map[string]*Error{}
			}
			failures[user][keyID] = e
		}
		own, err := k.crossSigningKeys(ctx, tx, signer)
		if err != nil {
			return err
		}
		recorded := map[string]bool{}
		record := func(deviceID string) error {
			if recorded[deviceID] {
				return nil
			}
			recorded[deviceID] = true
			return c.record(ctx, tx, signer, deviceID, false)
		}
		for _, target := range sortedKeys(signed) {
			for _, keyID := range sortedKeys(signed[target]) {
				canonical, err := canonicalObject(signed[target][keyID])
				if err != nil {
					fail(target, keyID, newErr(CodeInvalidParam, "not a JSON object"))
					continue
				}
				var e *Error
				var changedDevice *string
				if target == signer {
					changedDevice, e, err = k.signOwnKey(ctx, tx, signer, keyID, canonical, own)
				} else {
					e, err = k.signOtherMaster(ctx, tx, signer, target, keyID, canonical, own)
					if e == nil && err == nil {
						// Only the signer sees this signature.
						changedDevice = new(string)
					}
				}
				if err != nil {
					return err
				}
				if e != nil {
					fail(target, keyID, e)
					continue
				}
				if err := record(*changedDevice); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return failures, nil
}

// signOwnKey stores signatures of one of the signer's own keys: a
// device's keys (by the self-signing key) or the master key (by devices).
// It returns the device whose list entry changed ("" for the master key).
func (k *KeyServer) signOwnKey(ctx context.Context, tx *sql.Tx, signer, keyID string, obj []byte, own map[string]storedCrossSigning) (*string, *Error, error) {
	sigs := signaturesOf(obj)[signer]
	var stored, ed string
	err := tx.QueryRowContext(ctx, sqlSelectDeviceKey, signer, keyID).Scan(&stored, &ed)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, nil, err
	}
	if err == nil {
		if !sameSignedPart([]byte(stored), obj) {
			return nil, newErr(CodeInvalidParam, "the object does not match the stored device keys"), nil
		}
		ssk, ok := own[purposeSelfSigning]
		if !ok {
			return nil, newErr(CodeInvalidSignature, "no self-signing key to verify the signature"), nil
		}
		sskID := "ed25519:" + ssk.pub
		sig, ok := sigs[sskID]
		if !ok {
			return nil, newErr(CodeInvalidSignature, "no signature by the self-signing key"), nil
		}
		if err := verify(obj, signer, sskID, ssk.pub); err != nil {
			return nil, newErr(CodeInvalidSignature, "Invalid signature"), nil
		}
		if _, err := tx.ExecContext(ctx, sqlInsertSignature, signer, keyID, signer, sskID, sig); err != nil {
			return nil, nil, err
		}
		return &keyID, nil, nil
	}
	master, ok := own[purposeMaster]
	if !ok || master.pub != keyID {
		return nil, newErr(CodeNotFound, "unknown key %s", keyID), nil
	}
	if !sameSignedPart(master.json, obj) {
		return nil, newErr(CodeInvalidParam, "the object does not match the stored master key"), nil
	}
	held := signaturesOf(master.json)[signer]
	found := 0
	for _, id := range sortedKeys(sigs) {
		if id == "ed25519:"+master.pub {
			continue // the key's own signature
		}
		if held[id] == sigs[id] {
			found++ // uploaded with the key already
			continue
		}
		alg, deviceID, _ := strings.Cut(id, ":")
		var devJSON, devEd string
		err := tx.QueryRowContext(ctx, sqlSelectDeviceKey, signer, deviceID).Scan(&devJSON, &devEd)
		if errors.Is(err, sql.ErrNoRows) || alg != "ed25519" {
			return nil, newErr(CodeInvalidSignature, "signature by unknown key %s", id), nil
		}
		if err != nil {
			return nil, nil, err
		}
		if err := verify(obj, signer, id, devEd); err != nil {
			return nil, newErr(CodeInvalidSignature, "Invalid signature"), nil
		}
		if _, err := tx.ExecContext(ctx, sqlInsertSignature, signer, master.pub, signer, id, sigs[id]); err != nil {
			return nil, nil, err
		}
		found++
	}
	if found == 0 {
		return nil, newErr(CodeInvalidSignature, "no signature by one of your devices"), nil
	}
	empty := ""
	return &empty, nil, nil
}

// signOtherMaster stores the signer's user-signing key's signature of
// another user's master key.
func (k *KeyServer) signOtherMaster(ctx context.Context, tx *sql.Tx, signer, target, keyID string, obj []byte, own map[string]storedCrossSigning) (*Error, error) {
	theirs, err := k.crossSigningKeys(ctx, tx, target)
	if err != nil {
		return nil, err
	}
	master, ok := theirs[purposeMaster]
	if !ok || master.pub != keyID {
		return newErr(CodeNotFound, "unknown master key %s of %s", keyID, target), nil
	}
	if !sameSignedPart(master.json, obj) {
		return newErr(CodeInvalidParam, "the object does not match the stored master key"), nil
	}
	usk, ok := own[purposeUserSigning]
	if !ok {
		return newErr(CodeInvalidSignature, "no user-signing key to verify the signature"), nil
	}
	uskID := "ed25519:" + usk.pub
	sig, ok := signaturesOf(obj)[signer][uskID]
	if !ok {
		return newErr(CodeInvalidSignature, "no signature by the user-signing key"), nil
	}
	if err := verify(obj, signer, uskID, usk.pub); err != nil {
		return newErr(CodeInvalidSignature, "Invalid signature"), nil
	}
	if _, err := tx.ExecContext(ctx, sqlInsertSignature, target, master.pub, signer, uskID, sig); err != nil {
		return nil, err
	}
	return nil, nil
}
