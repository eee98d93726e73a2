#!/usr/bin/env bash
# Build the Plexus release image from this checkout: build/docker/build.sh IMAGE
# Needs Go and a Docker engine; the CA bundle comes from this machine
# (Debian's ca-certificates package).
set -euo pipefail
image=${1:?usage: build.sh IMAGE}
top=$(cd "$(dirname "$0")/../.." && pwd)
cas=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
test -r "$cas" || { echo "no CA bundle at $cas (install ca-certificates or set CA_BUNDLE)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
(cd "$top" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$ctx/plexus" ./cmd/plexus)
cp "$top/build/docker/Dockerfile" "$top/build/complement/nsswitch.conf" "$ctx/"
cp "$cas" "$ctx/ca-certificates.crt"
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx"
