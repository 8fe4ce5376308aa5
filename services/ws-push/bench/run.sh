#!/usr/bin/env bash
# The ws-push benchmark: idle RSS per connection, and broadcast to N subscribers of one
# channel at fixed rates (deliveries per server CPU-second, latency, losses), with the
# node `ws` broadcast server as a peer in the same run. Prints markdown tables.
#
#   services/ws-push/bench/run.sh [idle_connections] [subscribers] [seconds]
#
# Needs: a release build (cargo build --release -p ws-push --bin ws-push --example loadgen),
# nats-server >= 2.10, node (npm install in this directory for the peer).
set -euo pipefail
IDLE=${1:-19000}
SUBS=${2:-10000}
SECS=${3:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target-ws-push}
BIN=$TARGET/release/ws-push
LOADGEN=$TARGET/release/examples/loadgen
SECRET=bench-secret
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no $1" >&2; exit 1; }

# A fresh nats-server for each ws-push phase: a node stopped with 19,000 users leaves
# most of its presence entries to expire (its shutdown removes what it can in 5 s), and
# the next node's sweep of them would be measured as broadcast CPU.
start_nats() {
  if [ -n "${NATS_PID:-}" ]; then kill "$NATS_PID"; wait "$NATS_PID" 2>/dev/null || true; fi
  NATS_PORT=$(free_port)
  nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats-$NATS_PORT" >/dev/null 2>&1 & NATS_PID=$!; PIDS+=($NATS_PID)
  for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break; sleep 0.1; done
}

start_ws_push() {
  HTTP_PORT=$(free_port)
  SB_NATS__URL=nats://127.0.0.1:$NATS_PORT SB_HTTP__LISTEN=127.0.0.1:$HTTP_PORT SB_GRPC__LISTEN=127.0.0.1:0 \
    SB_AUTH__JWT_SECRET=$SECRET SB_LOG__LEVEL=warn SB_WS__MAX_CONNECTIONS_PER_USER=0 \
    "$BIN" >/dev/null 2>&1 & WS_PID=$!; PIDS+=($WS_PID)
  wait_http "http://127.0.0.1:$HTTP_PORT/readyz"
}

echo "## ws-push $(date -u +%F) on $(nproc) cores"
echo
echo "### Idle connections (ws-push)"
start_nats
start_ws_push
"$LOADGEN" --url "ws://127.0.0.1:$HTTP_PORT/ws" --nats "nats://127.0.0.1:$NATS_PORT" --secret $SECRET --pid $WS_PID idle --connections "$IDLE"
kill -TERM $WS_PID; wait $WS_PID 2>/dev/null || true

echo
echo "### Broadcast, $SUBS subscribers on one channel, ${SECS}s per rate (ws-push)"
start_nats
start_ws_push
for RATE in 2 10 30; do
  "$LOADGEN" --url "ws://127.0.0.1:$HTTP_PORT/ws" --nats "nats://127.0.0.1:$NATS_PORT" --secret $SECRET --pid $WS_PID \
    broadcast --subscribers "$SUBS" --rate $RATE --seconds "$SECS" | tail -n +$([ $RATE = 2 ] && echo 1 || echo 3)
done
kill -TERM $WS_PID; wait $WS_PID 2>/dev/null || true

if [ -d "$HERE/node_modules/ws" ]; then
  echo
  echo "### Peer: node ws $(node -p 'require(process.argv[1]+"/node_modules/ws/package.json").version' "$HERE"), same load"
  PEER_PORT=$(free_port)
  node "$HERE/ws-peer.js" "$PEER_PORT" >/dev/null & PEER_PID=$!; PIDS+=($PEER_PID)
  for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$PEER_PORT") 2>/dev/null && break; sleep 0.1; done
  "$LOADGEN" --url "ws://127.0.0.1:$PEER_PORT/ws" --pid $PEER_PID --peer-publish-url "http://127.0.0.1:$PEER_PORT/publish" \
    idle --connections "$IDLE"
  sleep 2 # the idle sockets close with the generator
  for RATE in 2 10 30; do
    "$LOADGEN" --url "ws://127.0.0.1:$PEER_PORT/ws" --pid $PEER_PID --peer-publish-url "http://127.0.0.1:$PEER_PORT/publish" \
      broadcast --subscribers "$SUBS" --rate $RATE --seconds "$SECS" | tail -n +$([ $RATE = 2 ] && echo 1 || echo 3)
  done
fi
