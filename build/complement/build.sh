#!/usr/bin/env bash
# Build the Complement image from this checkout: build/complement/build.sh IMAGE
set -euo pipefail
image=${1:?usage: build.sh IMAGE}
top=$(cd "$(dirname "$0")/../.." && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
(cd "$top" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$ctx/plexus" ./cmd/plexus)
cp "$top/build/complement/Dockerfile" "$top/build/complement/nsswitch.conf" "$ctx/"
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx"
