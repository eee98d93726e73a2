package federationapi

import "testing"

// FuzzParseXMatrix checks that no Authorization header crashes the parser
// and that what it accepts has the required parameters.
func FuzzParseXMatrix(f *testing.F) {
	for _, seed := range []string{
		`X-Matrix origin="a.example",destination="b.example",key="ed25519:k",sig="s"`,
		`X-Matrix origin=a.example:8448,key=ed25519:k,sig=abc+/=`,
		`X-Matrix origin="a\"b",key="k\\",sig="\`,
		`x-matrix ,,,`,
		`Bearer x`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		x, err := parseXMatrix(header)
		if err == nil && (x.Origin == "" || x.Key == "" || x.Sig == "") {
			t.Fatalf("accepted %q without origin, key or sig: %+v", header, x)
		}
	})
}
