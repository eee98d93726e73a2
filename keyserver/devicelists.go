package keyserver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
)

// The device list stream holds the changes of local users and of the
// remote users whose lists are cached; /sync reads both. Local changes are
// also what the federation API sends to other servers; remote ones arrive
// from it through the Apply/Replace methods below.

// LocalDeviceListUpdates implements API. Device names are not shared with
// other servers.
func (k *KeyServer) LocalDeviceListUpdates(ctx context.Context, after int64, limit int) ([]DeviceListUpdate, error) {
	upTo := k.stream.position()
	var out []DeviceListUpdate
	for len(out) < limit && after < upTo {
		type row struct {
			pos      int64
			user     string
			device   string
			deleted  bool
			isLocal  bool
			prev     sql.NullInt64
			keysJSON json.RawMessage
		}
		var batch []row
		rows, err := k.db.Reader().QueryContext(ctx, sqlChangesAfter, after, upTo, limit)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.pos, &r.user, &r.device, &r.deleted); err != nil {
				rows.Close()
				return nil, err
			}
			_, r.isLocal = k.localpart(r.user)
			batch = append(batch, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(batch) == 0 {
			break
		}
		for _, r := range batch {
			after = r.pos
			if !r.isLocal || len(out) >= limit {
				continue
			}
			u := DeviceListUpdate{UserID: r.user, DeviceID: r.device, StreamID: r.pos, Deleted: r.deleted}
			if r.device != "" {
				// The prev_id chain of m.device_list_update links device
				// changes only: cross-signing changes travel as
				// m.signing_key_update, which has no stream_id.
				if err := k.db.Reader().QueryRowContext(ctx, sqlPrevDeviceChange, r.user, r.pos).Scan(&r.prev); err != nil {
					return nil, err
				}
				if r.prev.Valid {
					u.PrevIDs = []int64{r.prev.Int64}
				}
			}
			if r.device != "" && !r.deleted {
				keys, err := k.deviceKeysForServers(ctx, r.user, r.device)
				if err != nil {
					return nil, err
				}
				if keys == nil {
					u.Deleted = true // deleted since
				}
				u.Keys = keys
			}
			out = append(out, u)
		}
	}
	return out, nil
}

// deviceKeysForServers is a device's keys with the signatures every other
// server may see; nil when it has none.
func (k *KeyServer) deviceKeysForServers(ctx context.Context, userID, deviceID string) (json.RawMessage, error) {
	var js, ed string
	err := k.db.Reader().QueryRowContext(ctx, sqlSelectDeviceKey, userID, deviceID).Scan(&js, &ed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sigs, err := k.signaturesOfUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	return withSignatures([]byte(js), sigs.by(deviceID, userID), nil), nil
}

// UserDevices implements API.
func (k *KeyServer) UserDevices(ctx context.Context, userID string) (*UserDevices, error) {
	if _, ok := k.localpart(userID); !ok {
		return nil, newErr(CodeNotFound, "not a local user")
	}
	q, err := k.QueryKeys(ctx, "", map[string][]string{userID: nil})
	if err != nil {
		return nil, err
	}
	d := &UserDevices{UserID: userID, MasterKey: q.MasterKeys[userID], SelfSigningKey: q.SelfSigningKeys[userID]}
	var latest sql.NullInt64
	// The stream_id of the user's latest m.device_list_update, which the
	// next one names as its prev_id.
	if err := k.db.Reader().QueryRowContext(ctx, sqlLatestDeviceChange, userID).Scan(&latest); err != nil {
		return nil, err
	}
	d.StreamID = latest.Int64
	for _, id := range sortedKeys(q.DeviceKeys[userID]) {
		// Names stay on this server, as in LocalDeviceListUpdates.
		keys := stripUnsigned(q.DeviceKeys[userID][id])
		d.Devices = append(d.Devices, UserDevice{DeviceID: id, Keys: keys})
	}
	return d, nil
}

func stripUnsigned(raw json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return raw
	}
	if _, ok := m["unsigned"]; !ok {
		return raw
	}
	delete(m, "unsigned")
	out, err := json.Marshal(m)
	if err != nil {
		return raw
	}
	return out
}

// RemoteDeviceListStreamID implements API.
func (k *KeyServer) RemoteDeviceListStreamID(ctx context.Context, userID string) (int64, bool, error) {
	var id int64
	err := k.db.Reader().QueryRowContext(ctx, sqlSelectRemoteList, userID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return id, err == nil, err
}

// ApplyRemoteDeviceListUpdate implements API.
func (k *KeyServer) ApplyRemoteDeviceListUpdate(ctx context.Context, u DeviceListUpdate) error {
	if _, local := k.localpart(u.UserID); local || serverOf(u.UserID) == "" || u.DeviceID == "" {
		return newErr(CodeInvalidParam, "not a remote user's device")
	}
	var dk *parsedDeviceKeys
	if !u.Deleted && !isNull(u.Keys) {
		var err error
		if dk, err = parseDeviceKeys(u.Keys, u.UserID, u.DeviceID); err != nil {
			return err
		}
	}
	return k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		if u.Deleted {
			if _, err := tx.ExecContext(ctx, sqlDeleteDeviceKeys, u.UserID, u.DeviceID); err != nil {
				return err
			}
		} else if dk != nil {
			if _, err := tx.ExecContext(ctx, sqlUpsertDeviceKeys, u.UserID, u.DeviceID, string(dk.canonical), dk.ed25519, u.DisplayName); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, sqlUpsertRemoteList, u.UserID, u.StreamID); err != nil {
			return err
		}
		return c.record(ctx, tx, u.UserID, u.DeviceID, u.Deleted)
	})
}

// ReplaceRemoteDeviceList implements API. Devices whose keys do not check
// out are left out.
func (k *KeyServer) ReplaceRemoteDeviceList(ctx context.Context, d UserDevices) error {
	return k.replaceRemoteDeviceList(ctx, d, true)
}

// replaceRemoteDeviceList stores a remote user's whole list; record is
// false when it starts being cached (remote.go): nothing changed for
// clients, who were answered by the user's server until then.
func (k *KeyServer) replaceRemoteDeviceList(ctx context.Context, d UserDevices, record bool) error {
	if _, local := k.localpart(d.UserID); local || serverOf(d.UserID) == "" {
		return newErr(CodeInvalidParam, "not a remote user")
	}
	type checked struct {
		id, name string
		keys     *parsedDeviceKeys
	}
	var devs []checked
	for _, dev := range d.Devices {
		if dk, err := parseDeviceKeys(dev.Keys, d.UserID, dev.DeviceID); err == nil {
			devs = append(devs, checked{dev.DeviceID, dev.DisplayName, dk})
		}
	}
	cs, err := parseRemoteCrossSigning(d.UserID, d.MasterKey, d.SelfSigningKey)
	if err != nil {
		return err
	}
	return k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		if _, err := tx.ExecContext(ctx, sqlDeleteUserDevices, d.UserID); err != nil {
			return err
		}
		for _, dev := range devs {
			if _, err := tx.ExecContext(ctx, sqlUpsertDeviceKeys, d.UserID, dev.id, string(dev.keys.canonical), dev.keys.ed25519, dev.name); err != nil {
				return err
			}
		}
		if _, err := k.storeRemoteCrossSigning(ctx, tx, d.UserID, cs); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, sqlUpsertRemoteList, d.UserID, d.StreamID); err != nil {
			return err
		}
		if !record {
			return nil
		}
		return c.record(ctx, tx, d.UserID, "", false)
	})
}

// ApplyRemoteCrossSigningKeys implements API.
func (k *KeyServer) ApplyRemoteCrossSigningKeys(ctx context.Context, userID string, master, selfSigning json.RawMessage) error {
	if _, local := k.localpart(userID); local || serverOf(userID) == "" {
		return newErr(CodeInvalidParam, "not a remote user")
	}
	cs, err := parseRemoteCrossSigning(userID, master, selfSigning)
	if err != nil {
		return err
	}
	return k.withChanges(ctx, func(tx *sql.Tx, c *changes) error {
		changed, err := k.storeRemoteCrossSigning(ctx, tx, userID, cs)
		if err != nil || !changed {
			return err // the same keys again (servers resend them) change nothing
		}
		return c.record(ctx, tx, userID, "", false)
	})
}

func parseRemoteCrossSigning(userID string, master, selfSigning json.RawMessage) ([]newCrossSigningKey, error) {
	var keys []newCrossSigningKey
	for _, p := range []struct {
		purpose string
		raw     json.RawMessage
	}{{purposeMaster, master}, {purposeSelfSigning, selfSigning}} {
		if isNull(p.raw) {
			continue
		}
		pub, canonical, err := parseCrossSigningKey(p.raw, userID, p.purpose)
		if err != nil {
			return nil, err
		}
		keys = append(keys, newCrossSigningKey{purpose: p.purpose, pub: pub, canonical: canonical})
	}
	return keys, nil
}

// storeRemoteCrossSigning stores a remote user's master and self-signing
// keys; a self-signing key must be signed by the (new or held) master key.
// changed is false when they were held already.
func (k *KeyServer) storeRemoteCrossSigning(ctx context.Context, tx *sql.Tx, userID string, keys []newCrossSigningKey) (changed bool, err error) {
	existing, err := k.crossSigningKeys(ctx, tx, userID)
	if err != nil {
		return false, err
	}
	masterPub := existing[purposeMaster].pub
	for _, nk := range keys {
		if nk.purpose == purposeMaster {
			masterPub = nk.pub
		}
	}
	for _, nk := range keys {
		if nk.purpose == purposeSelfSigning {
			if masterPub == "" || verify(nk.canonical, userID, "ed25519:"+masterPub, masterPub) != nil {
				return false, newErr(CodeInvalidSignature, "the self-signing key is not signed by the master key")
			}
		}
	}
	for _, nk := range keys {
		old, had := existing[nk.purpose]
		if had && bytes.Equal(old.json, nk.canonical) {
			continue
		}
		changed = true
		if had && old.pub != nk.pub && nk.purpose == purposeMaster {
			if _, err := tx.ExecContext(ctx, sqlDeleteTargetSigs, userID, old.pub); err != nil {
				return false, err
			}
		}
		if _, err := tx.ExecContext(ctx, sqlUpsertCrossSigning, userID, nk.purpose, nk.pub, string(nk.canonical)); err != nil {
			return false, err
		}
	}
	return changed, nil
}
