// Package interop holds tests that federate Plexus with other Matrix
// homeservers run as black boxes on loopback. They are skipped unless the
// other server's binary is named in the environment (DENDRITE_BIN for
// Dendrite); scripts/interop-dendrite.sh installs Dendrite and runs them.
package interop
