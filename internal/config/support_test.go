package config

import "testing"

// The support contacts and server notice settings survive the generated
// config, and contacts must say who to reach.
func TestSupportAndServerNoticesRoundTrip(t *testing.T) {
	want := Default("example.org")
	want.WellKnown.Support = Support{SupportPage: "https://example.org/help",
		Contacts: []SupportContact{{Role: "m.role.admin", MatrixID: "@admin:example.org"}, {Role: "m.role.security", EmailAddress: "sec@example.org"}}}
	want.ServerNotices.SystemUserLocalpart = "notices"
	raw, err := Generate(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(raw)
	if err != nil {
		t.Fatalf("parse generated config: %v\n%s", err, raw)
	}
	if got.WellKnown.Support.SupportPage != want.WellKnown.Support.SupportPage || len(got.WellKnown.Support.Contacts) != 2 ||
		got.WellKnown.Support.Contacts[1] != want.WellKnown.Support.Contacts[1] || got.ServerNotices != want.ServerNotices {
		t.Fatalf("round trip: %+v %+v", got.WellKnown.Support, got.ServerNotices)
	}
	if err := want.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	bad := Default("example.org")
	bad.WellKnown.Support.Contacts = []SupportContact{{Role: "m.role.admin"}}
	if err := bad.Validate(); err == nil {
		t.Error("a contact with neither matrix_id nor email_address was accepted")
	}
	bad = Default("example.org")
	bad.ServerNotices.SystemUserLocalpart = "@server"
	if err := bad.Validate(); err == nil {
		t.Error("a system user localpart with @ was accepted")
	}
}
