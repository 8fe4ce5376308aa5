#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration against a real
# nats-server / PostgreSQL / prosody / ngircd, the deployment-file checks and the
# browser tests. Installs what is missing first (scripts/install-deps.sh).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p ami-bridge   # extra arguments go to `cargo nextest run`
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/install-deps.sh"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"

if [ "$#" -eq 0 ]; then set -- --workspace; fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast "$@"
    # nextest does not run doctests.
    cargo test --doc --quiet "$@"
else
    cargo test --no-fail-fast "$@"
fi
