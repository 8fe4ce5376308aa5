#!/usr/bin/env bash
# Runs the whole stack on this machine: installs nats-server if it is missing,
# builds the five services and the `switchboard` CLI, then `switchboard up`
# (its own nats-server with JetStream on 127.0.0.1:14222, data in .sb-data/,
# SQLite by default). Ctrl-C stops everything. Extra arguments go to `switchboard up`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"
if [ "$(sb_nats_version)" -lt 21000 ]; then
    "$root/scripts/install-deps.sh"
    . "$root/scripts/env.sh"
fi
echo "switchboard ▸ building (first time: a few minutes)"
cargo build --quiet --bins --workspace
exec "$CARGO_TARGET_DIR/debug/switchboard" up "$@"
