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

all=0
if [ "$#" -eq 0 ]; then set -- --workspace; all=1; fi
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast "$@" || status=1
    # nextest does not run doctests.
    cargo test --doc --quiet "$@" || status=1
else
    cargo test --no-fail-fast "$@" || status=1
fi

# Browser tests (Playwright driving Debian's chromium against the debug binaries
# built above), when running everything.
if [ "$all" -eq 1 ]; then
    for dir in services/*/browser-tests tests/browser; do
        [ -f "$dir/package.json" ] || continue
        echo "test.sh: browser tests in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error && npm test) || status=1
    done
fi
exit "$status"
