package httputil

import (
	"encoding/json"
	"errors"
	"testing"
)

type fuzzBody struct {
	Name   string          `json:"name"`
	Count  int             `json:"count"`
	Small  int8            `json:"small"`
	OK     bool            `json:"ok"`
	Tags   []string        `json:"tags"`
	Raw    json.RawMessage `json:"raw"`
	Nested struct {
		ID    string         `json:"id"`
		Depth *int           `json:"depth"`
		Map   map[string]int `json:"map"`
	} `json:"nested"`
}

// FuzzDecodeJSONObject checks that no body makes DecodeJSONObject panic or
// fail with anything but M_NOT_JSON or M_BAD_JSON (which would become a
// 500 or a wrong errcode).
func FuzzDecodeJSONObject(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `[]`, `null`, `"x"`, ` {"name":"a"} `, `{"name":"a"}{}`,
		`{"name":"a","count":3,"ok":true,"tags":["x","y"],"raw":{"any":[1]},"nested":{"id":"i","depth":2,"map":{"k":1}}}`,
		`{"count":"3"}`, `{"count":1e400}`, `{"small":300}`, `{"count":-0.0}`, `{"tags":[1]}`,
		`{"nested":[]}`, `{"nested":{"map":{"k":"v"}}}`, `{"raw":}`, `{"name":"\ud800"}`,
		"{\"name\":\"\xff\"}", `{"a":{"b":{"c":{"d":[[[[[]]]]]}}}}`, `{"Name":"case","NAME":1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var dst fuzzBody
		err := DecodeJSONObject(data, &dst)
		if err == nil {
			return
		}
		var merr *Error
		if !errors.As(err, &merr) {
			t.Fatalf("%q: not a Matrix error: %v", data, err)
		}
		if (merr.Code != "M_NOT_JSON" && merr.Code != "M_BAD_JSON") || merr.Status != 400 {
			t.Fatalf("%q: got %d %s", data, merr.Status, merr.Code)
		}
	})
}
