#!/usr/bin/env bash
# Runs the whole stack on this machine: installs nats-server if it is missing
# (and prosody for `--demo`, whose IM flows need an XMPP server), builds the five
# services and the `switchboard` CLI, then `switchboard up` (its own nats-server
# with JetStream on 127.0.0.1:14222, data in .sb-data/, SQLite by default). Ctrl-C
# stops everything. Extra arguments go to `switchboard up`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"
mode=--up
for arg in "$@"; do
    if [ "$arg" = "--demo" ]; then mode=--demo; fi
done
if [ "$(sb_nats_version)" -lt 21000 ] || { [ "$mode" = --demo ] && ! command -v prosody >/dev/null 2>&1; }; then
    "$root/scripts/install-deps.sh" "$mode"
    . "$root/scripts/env.sh"
fi
echo "switchboard ▸ building (first time: a few minutes)"
cargo build --quiet --bins --workspace
exec "$CARGO_TARGET_DIR/debug/switchboard" up "$@"
