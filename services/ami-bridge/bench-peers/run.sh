#!/bin/sh
# Runs the ami-bridge end-to-end flood and the two peers on the same ami-sim flood.
# Usage: services/ami-bridge/bench-peers/run.sh [events]   (after a release build of
#   `-p ami-bridge --example flood --bin ami-sim`; peers: pip panoramisk, npm install here)
set -eu
N="${1:-200000}"
T="${CARGO_TARGET_DIR:-target}/release"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
echo "## ami-bridge: sim -> bridge -> JetStream -> subscriber"
"$T/examples/flood" "$N" 10000
echo
echo "## peers: sim -> client library (receive and parse only)"
PORT=15038
"$T/ami-sim" --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null || true' EXIT
sleep 1
echo "| peer | events | received | gaps | seconds | events/s |"
echo "|---|---|---|---|---|---|"
"$PY" "$HERE/panoramisk_flood.py" 127.0.0.1 "$PORT" "$N"
node "$HERE/asterisk_manager_flood.js" 127.0.0.1 "$PORT" "$N"
