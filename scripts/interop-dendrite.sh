#!/usr/bin/env bash
# Federates Plexus with a real Dendrite on loopback over TLS
# (internal/interop, TestDendriteFederation): installs Dendrite with
# `go install` from the Go module proxy when the wanted version is not
# already there, then runs the test.
#
#   scripts/interop-dendrite.sh            # install if needed, run
#   scripts/interop-dendrite.sh -run 'Dendrite/Invites'   # extra go test flags
#
# Environment:
#   DENDRITE_VERSION  the version to install (default v0.13.8)
#   DENDRITE_GOBIN    where to install it (default /tmp/dendrite-bin)
#   DENDRITE_BIN      use this binary instead of installing one
#   INTEROP_LOG_DIR   keep both servers' logs and Dendrite's config there
#   INTEROP_STEP_TIMEOUT, INTEROP_STRICT, INTEROP_PLEXUS_LOG_LEVEL,
#   INTEROP_DENDRITE_LOG_LEVEL, INTEROP_DENDRITE_SKIP_TLS_VERIFY: see
#   internal/interop/dendrite_test.go.
set -euo pipefail

cd "$(dirname "$0")/.."
version="${DENDRITE_VERSION:-v0.13.8}"
gobin="${DENDRITE_GOBIN:-/tmp/dendrite-bin}"

if [ -z "${DENDRITE_BIN:-}" ]; then
	DENDRITE_BIN="$gobin/dendrite"
	if [ "$("$DENDRITE_BIN" -version 2>/dev/null || true)" != "${version#v}" ]; then
		echo "installing dendrite $version into $gobin" >&2
		# Outside the module, so that its go.mod is not touched.
		(cd "$(mktemp -d)" && GOBIN="$gobin" go install "github.com/matrix-org/dendrite/cmd/dendrite@$version")
	fi
fi
echo "dendrite: $DENDRITE_BIN ($("$DENDRITE_BIN" -version))" >&2
export DENDRITE_BIN
exec go test ./internal/interop/ -run Dendrite -v -count=1 "$@"
