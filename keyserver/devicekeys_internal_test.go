package keyserver

import (
	"encoding/json"
	"testing"
)

// Each rule /keys/upload checks (devicekeys.go), and what it leaves to
// the clients.
func TestParseDeviceKeysRules(t *testing.T) {
	const user, dev = "@alice:example.org", "DEV"
	valid := func() map[string]any {
		return map[string]any{
			"user_id": user, "device_id": dev, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
			"keys":       map[string]any{"ed25519:" + dev: "edpubkey", "curve25519:" + dev: "curvepubkey"},
			"signatures": map[string]any{user: map[string]string{"ed25519:" + dev: "not+verified"}},
		}
	}
	for _, c := range []struct {
		name   string
		change func(m map[string]any)
		ok     bool
	}{
		{"placeholder keys and a signature that does not verify", func(map[string]any) {}, true},
		{"an unknown key algorithm", func(m map[string]any) { m["keys"].(map[string]any)["rot13:"+dev] = "x" }, true},
		{"another user", func(m map[string]any) { m["user_id"] = "@bob:example.org" }, false},
		{"another device", func(m map[string]any) { m["device_id"] = "OTHER" }, false},
		{"user_id and device_id only (SyTest's upload helper)", func(m map[string]any) {
			delete(m, "algorithms")
			delete(m, "keys")
			delete(m, "signatures")
		}, true},
		{"algorithms not a list", func(m map[string]any) { m["algorithms"] = "m.olm.v1.curve25519-aes-sha2" }, false},
		{"algorithms not strings", func(m map[string]any) { m["algorithms"] = []int{1} }, false},
		{"a key ID without algorithm", func(m map[string]any) { m["keys"].(map[string]any)[":"+dev] = "x" }, false},
		{"a key ID without colon", func(m map[string]any) { m["keys"].(map[string]any)["ed25519"] = "x" }, false},
		{"a key that is not a string", func(m map[string]any) { m["keys"].(map[string]any)["curve25519:"+dev] = 1 }, false},
		{"keys not an object", func(m map[string]any) { m["keys"] = []string{"x"} }, false},
		{"signatures not an object of objects", func(m map[string]any) { m["signatures"] = map[string]any{user: "x"} }, false},
	} {
		m := valid()
		c.change(m)
		raw, _ := json.Marshal(m)
		_, err := parseDeviceKeys(raw, user, dev)
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok %v", c.name, err, c.ok)
		}
	}
	if _, err := parseDeviceKeys(json.RawMessage(`[1]`), user, dev); err == nil {
		t.Error("an array was taken for device keys")
	}
}

func TestParseOneTimeKeysRules(t *testing.T) {
	signed := `{"key":"k","signatures":{"@alice:example.org":{"ed25519:DEV":"not+verified"}}}`
	for _, c := range []struct {
		name, id, value string
		ok              bool
	}{
		{"a signed key whose signature is not checked", "signed_curve25519:A", signed, true},
		{"an unsigned key", "curve25519:A", `"k"`, true},
		{"an unknown algorithm, a string", "my_algorithm:my_id", `"my+key"`, true},
		{"an unknown algorithm, an object", "my_algorithm:my_id", `{"k":1}`, true},
		{"no colon", "signed_curve25519", signed, false},
		{"no key ID", "signed_curve25519:", signed, false},
		{"no algorithm", ":A", signed, false},
		{"a signed key as a string", "signed_curve25519:A", `"k"`, false},
		{"a signed key without key", "signed_curve25519:A", `{"signatures":{}}`, false},
		{"a signed key without signatures", "signed_curve25519:A", `{"key":"k"}`, false},
		{"an unsigned key as an object", "curve25519:A", signed, false},
		{"an empty key", "my_algorithm:my_id", `""`, false},
		{"a number", "my_algorithm:my_id", `1`, false},
	} {
		_, err := parseOneTimeKeys(map[string]json.RawMessage{c.id: json.RawMessage(c.value)}, "one_time_keys")
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok %v", c.name, err, c.ok)
		}
	}
}
