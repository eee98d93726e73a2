package federationapi

import (
	"errors"
	"strings"
	"testing"
)

func TestParseXMatrix(t *testing.T) {
	cases := []struct {
		header string
		want   xMatrix
		err    string // "" for success, "other" for errNotXMatrix
	}{
		{
			header: `X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF..."`,
			want:   xMatrix{Origin: "origin.hs.example.com", Destination: "destination.hs.example.com", Key: "ed25519:key1", Sig: "ABCDEF..."},
		},
		{
			// Unquoted values with colons, spaces around commas and the
			// equals sign, names in any case, the scheme in any case.
			header: "x-matrix   Origin = a.example:8448 ,\tKEY=ed25519:k ,sig=abc+/d==, destination=b.example",
			want:   xMatrix{Origin: "a.example:8448", Destination: "b.example", Key: "ed25519:k", Sig: "abc+/d=="},
		},
		{
			// No destination (older servers); unknown parameters ignored;
			// empty list elements allowed; escapes in quoted strings.
			header: `X-Matrix ,origin="a\.example",, extra="x, y",key="ed25519:k",sig="s"`,
			want:   xMatrix{Origin: "a.example", Key: "ed25519:k", Sig: "s"},
		},
		{header: `Bearer abc`, err: "other"},
		{header: `X-Matrixorigin="a"`, err: "other"},
		{header: `X-Matrix origin="a",key="ed25519:k"`, err: "required"},
		{header: `X-Matrix origin="a",key="ed25519:k",sig="s`, err: "unterminated"},
		{header: `X-Matrix origin="a" key="ed25519:k",sig="s"`, err: "expected ,"},
		{header: `X-Matrix origin,key="ed25519:k",sig="s"`, err: "expected ="},
		{header: `X-Matrix origin=,key="ed25519:k",sig="s"`, err: "empty value"},
		{header: `X-Matrix origin="a",origin="b",key="ed25519:k",sig="s"`, err: "twice"},
		{header: `X-Matrix ="a"`, err: "parameter name"},
		{header: `X-Matrix`, err: "required"},
	}
	for _, c := range cases {
		got, err := parseXMatrix(c.header)
		switch {
		case c.err == "other":
			if !errors.Is(err, errNotXMatrix) {
				t.Errorf("%s: err = %v, want errNotXMatrix", c.header, err)
			}
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err = %v, want one mentioning %q", c.header, err, c.err)
			}
		case err != nil:
			t.Errorf("%s: %v", c.header, err)
		case got != c.want:
			t.Errorf("%s:\n got %+v\nwant %+v", c.header, got, c.want)
		}
	}
}
