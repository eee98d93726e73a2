#!/bin/sh
# compare.sh measures Plexus and Dendrite with plexus-load on this machine,
# one after the other, in one run: the figures of docs/performance.md.
#
#   cmd/plexus-load/compare.sh [OUT]       (from the repository root)
#
# Each server starts on a fresh SQLite data folder on loopback, with open
# registration, rate limits off and bcrypt cost 4 (registration is setup,
# not measured), idles IDLE seconds, then plexus-load runs every mode
# against it (-pid: the server's CPU and memory from /proc). RUNS runs
# alternate which server goes first. A last Plexus run grows a room to
# 10,000 members. Reports land in OUT (default /tmp/plexus-compare-DATE);
# `plexus-load compare` prints each run's ratios Plexus/Dendrite.
#
# MODES lists the plexus-load -mode values to run, each on its own fresh
# server (default "all sync": create, send and join on one, the sync API on
# another, so the long-poll memory reading starts from a server that did
# only the sync setup). Its reports are named run<N>-<server>-<mode>.json
# ("all" keeps run<N>-<server>.json). For the sync figures alone:
#   MODES=sync BIG_MEMBERS= cmd/plexus-load/compare.sh
#
# Needs: Go; Dendrite, generate-config and generate-keys in DENDRITE_BIN:
#   GOBIN=/tmp/dendrite-bin go install github.com/matrix-org/dendrite/cmd/dendrite@v0.13.8 \
#     github.com/matrix-org/dendrite/cmd/generate-config@v0.13.8 github.com/matrix-org/dendrite/cmd/generate-keys@v0.13.8
set -eu

OUT=${1:-/tmp/plexus-compare-$(date +%Y%m%d-%H%M%S)}
RUNS=${RUNS:-2}
DURATION=${DURATION:-20s}
MEMBERS=${MEMBERS:-10,100,700}
SAMPLES=${SAMPLES:-20}
BIG_MEMBERS=${BIG_MEMBERS-10,100,1000,10000}
IDLE=${IDLE:-10}
MODES=${MODES:-all sync}
LONGPOLLS=${LONGPOLLS:-1000}
SYNC_SAMPLES=${SYNC_SAMPLES:-200}
SETTLE=${SETTLE:-30s}
DENDRITE_BIN=${DENDRITE_BIN:-/tmp/dendrite-bin}
PLEXUS_BIN=${PLEXUS_BIN:-$OUT/plexus}
LOAD_BIN=${LOAD_BIN:-$OUT/plexus-load}
PLEXUS_ADDR=${PLEXUS_ADDR:-127.0.0.1:18008}
DENDRITE_ADDR=${DENDRITE_ADDR:-127.0.0.1:18108}
# 1,000 long-polls need more than the usual 1,024 open files, in the
# servers (started from here) and in plexus-load.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$OUT"
# Plexus is built as it is released (README, build/docker): static, no cgo.
[ -x "$PLEXUS_BIN" ] || CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$PLEXUS_BIN" ./cmd/plexus
[ -x "$LOAD_BIN" ] || go build -o "$LOAD_BIN" ./cmd/plexus-load
{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -m | awk '/Mem:/ {print $2}') MiB"
	echo "kernel: $(uname -r)"
	echo "go: $(go version)"
	echo "plexus: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo "dendrite: $("$DENDRITE_BIN/dendrite" -version 2>&1 | head -1)"
	echo "settings: MODES=$MODES DURATION=$DURATION MEMBERS=$MEMBERS SAMPLES=$SAMPLES IDLE=$IDLE SETTLE=$SETTLE LONGPOLLS=$LONGPOLLS SYNC_SAMPLES=$SYNC_SAMPLES"
} | tee "$OUT/env.txt"

# wait_up URL: until the client API answers.
wait_up() {
	for _ in $(seq 600); do
		curl -fs "$1/_matrix/client/versions" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "server at $1 did not start" >&2
	return 1
}

SERVER_PID=
stop_server() {
	[ -n "$SERVER_PID" ] || return 0
	kill "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

start_plexus() { # data folder
	PLEXUS_SERVER_NAME=localhost PLEXUS_LISTEN=$PLEXUS_ADDR PLEXUS_RATE_LIMIT=off \
		PLEXUS_REGISTRATION_OPEN=true PLEXUS_BCRYPT_COST=4 PLEXUS_LOG_LEVEL=warn PLEXUS_TRUSTED_KEY_SERVERS= \
		"$PLEXUS_BIN" run -data-dir "$1" >"$1.log" 2>&1 &
	SERVER_PID=$!
	wait_up "http://$PLEXUS_ADDR"
}

start_dendrite() { # data folder
	mkdir -p "$1"
	(cd "$1" && "$DENDRITE_BIN/generate-keys" --private-key matrix_key.pem >/dev/null)
	# The default config with open registration, no rate limits, bcrypt
	# cost 4, no notary (key_perspectives) and warnings-only logs on stderr.
	"$DENDRITE_BIN/generate-config" -dir "$1" -server localhost |
		sed -e 's/registration_disabled: true/registration_disabled: false/' \
			-e 's/bcrypt_cost: 10/bcrypt_cost: 4/' \
			-e '/rate_limiting:/{n;s/enabled: true/enabled: false/}' |
		awk '
			/^  key_perspectives:/ { print "  key_perspectives: []"; skip = 1; next }
			skip && /^  [a-z_]+:/ { skip = 0 }
			skip { next }
			/^  trusted_third_party_id_servers:/ { print "  trusted_third_party_id_servers: []"; drop = 1; next }
			drop && /^  - / { next }
			{ drop = 0 }
			/^logging:/ { print "logging:\n- type: std\n  level: warn"; exit }
			{ print }' >"$1/dendrite.yaml"
	(cd "$1" && exec "$DENDRITE_BIN/dendrite" -config dendrite.yaml -http-bind-address "$DENDRITE_ADDR" \
		-https-bind-address "" --really-enable-open-registration) >"$1.log" 2>&1 &
	SERVER_PID=$!
	wait_up "http://$DENDRITE_ADDR"
}

measure() { # name run address [plexus-load flags]
	name=$1 run=$2 addr=$3
	shift 3
	data="$OUT/run$run-$name"
	"start_$(echo "$name" | sed 's/-.*//')" "$data"
	sleep "$IDLE"
	echo "== run $run: $name (pid $SERVER_PID)"
	"$LOAD_BIN" -url "http://$addr" -pid "$SERVER_PID" -duration "$DURATION" -settle "$SETTLE" \
		-json "$OUT/run$run-$name.json" "$@" | tee "$OUT/run$run-$name.txt"
	stop_server
	echo "data folder: $(du -sb "$data" | cut -f1) bytes" | tee -a "$OUT/run$run-$name.txt"
}

# suffix MODE: the report name's tail for a mode ("all" has none).
suffix() { [ "$1" = all ] && echo "" || echo "-$1"; }

for run in $(seq "$RUNS"); do
	if [ $((run % 2)) -eq 1 ]; then order="dendrite plexus"; else order="plexus dendrite"; fi
	for mode in $MODES; do
		sfx=$(suffix "$mode")
		for name in $order; do
			addr=$PLEXUS_ADDR
			[ "$name" = dendrite ] && addr=$DENDRITE_ADDR
			measure "$name$sfx" "$run" "$addr" -mode "$mode" -members "$MEMBERS" -samples "$SAMPLES" \
				-longpolls "$LONGPOLLS" -sync-samples "$SYNC_SAMPLES"
		done
		echo "== run $run ($mode): a = Dendrite, b = Plexus"
		"$LOAD_BIN" compare "$OUT/run$run-dendrite$sfx.json" "$OUT/run$run-plexus$sfx.json" | tee "$OUT/run$run-compare$sfx.txt"
	done
done

if [ -n "$BIG_MEMBERS" ]; then
	measure plexus-big 0 "$PLEXUS_ADDR" -mode join -members "$BIG_MEMBERS" -samples 20 -conc 4
fi
echo "reports in $OUT"
