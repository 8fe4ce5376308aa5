#!/usr/bin/env bash
# Runs every benchmark of the project, peers included, and writes the results into
# BENCHMARKS.md: the machine, the date, a summary of every figure against its target
# with the peer's figure and the ratio (scripts/bench_summary.py), and each harness's
# table. The hand-written summary above the marker line of BENCHMARKS.md is kept;
# everything below it is replaced by this run.
#
#   scripts/bench.sh           # full sizes (tens of minutes on 2 cores)
#   scripts/bench.sh --quick   # small sizes: checks every harness runs (numbers not comparable)
#
# Each harness's own log goes to $BENCH_OUT (default: a temp dir, printed at the end).
# A harness that fails is reported as failed in BENCHMARKS.md; the others still run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/install-deps.sh"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"

quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; fi
out="${BENCH_OUT:-$(mktemp -d /tmp/sb-bench-XXXXXX)}"
mkdir -p "$out"
target="$CARGO_TARGET_DIR"
say() { echo "bench.sh: $*" >&2; }

if [ "$quick" -eq 1 ]; then
    AMI_EVENTS=20000; WS_IDLE=1000; WS_SUBS=500; WS_SECS=3
    CHAT_ARGS=(--messages 20000 --send 2000 --single 100 --pages 100)
    F1_ENV=(F1_SECONDS=3)
else
    AMI_EVENTS=200000; WS_IDLE=19000; WS_SUBS=10000; WS_SECS=10
    CHAT_ARGS=(--messages 1000000 --send 20000 --single 1000 --pages 1000)
    F1_ENV=(F1_SECONDS=20)
fi

say "building the harnesses (release)"
cargo build --release --quiet \
    -p ami-bridge --bin ami-sim --example flood \
    -p ws-push --bin ws-push --example loadgen \
    -p chat-store --bin chat-bench \
    -p hook-runner --example bench
cargo bench --no-run --quiet -p im-bridge --bench im_throughput
cargo bench --no-run --quiet -p switchboard-flows --bench f1_latency
(cd services/ami-bridge/bench-parser && CARGO_TARGET_DIR="$target/bench-parser" cargo build --release --quiet)

say "installing the peers"
python3 -c 'import panoramisk' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check panoramisk
(cd services/ami-bridge/bench-peers && npm ci --no-audit --no-fund --loglevel=error)
(cd services/ws-push/bench && npm ci --no-audit --no-fund --loglevel=error)

# run NAME COMMAND...: the command's stdout (a Markdown table) goes to $out/NAME.md.
run() {
    local name="$1"; shift
    say "running $name"
    local started=$SECONDS
    if "$@" >"$out/$name.md" 2>"$out/$name.log"; then
        echo "" >>"$out/$name.md"
        echo "_($((SECONDS - started)) s)_" >>"$out/$name.md"
    else
        echo "**failed** (exit $?): see $name.log in the run's output dir" >>"$out/$name.md"
    fi
}

run ami-parser "$target/bench-parser/release/ami-bridge-bench-parser"
run ami-e2e-and-peers env CARGO_TARGET_DIR="$target" services/ami-bridge/bench-peers/run.sh "$AMI_EVENTS"
run ws-push env CARGO_TARGET_DIR="$target" services/ws-push/bench/run.sh "$WS_IDLE" "$WS_SUBS" "$WS_SECS"
sqlite_db="$out/chat-bench.db"
rm -f "$sqlite_db"
run chat-store-sqlite "$target/release/chat-bench" --database "sqlite://$sqlite_db?mode=rwc" "${CHAT_ARGS[@]}"
if psql -h 127.0.0.1 -U postgres -q -c 'DROP DATABASE IF EXISTS chat_bench' -c 'CREATE DATABASE chat_bench' >/dev/null 2>&1; then
    run chat-store-postgres "$target/release/chat-bench" --database postgres://postgres@127.0.0.1:5432/chat_bench "${CHAT_ARGS[@]}" --writers 4
else
    echo "**not run**: no PostgreSQL at postgres@127.0.0.1:5432" >"$out/chat-store-postgres.md"
fi
run hook-runner "$target/release/examples/bench"
run im-bridge cargo bench --quiet -p im-bridge --bench im_throughput
run f1-latency env "${F1_ENV[@]}" cargo bench --quiet -p switchboard-flows --bench f1_latency

marker='<!-- scripts/bench.sh writes everything below this line -->'
summary="$(awk -v m="$marker" '$0 == m { exit } { print }' BENCHMARKS.md)"
{
    printf '%s\n%s\n\n' "$summary" "$marker"
    echo "## Latest run of scripts/bench.sh$( [ "$quick" -eq 1 ] && echo ' --quick (small sizes: not comparable)')"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
    echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- $(rustc --version), nats-server $(nats-server --version | sed 's/.*v//'), node $(node --version), $(python3 --version)"
    echo
    echo "### Against the targets (the issues' figures; peers measured in this run)"
    echo
    python3 "$root/scripts/bench_summary.py" "$out"
    for name in ami-parser ami-e2e-and-peers ws-push chat-store-sqlite chat-store-postgres hook-runner im-bridge f1-latency; do
        echo
        echo "### $name"
        echo
        cat "$out/$name.md"
    done
} >BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
say "BENCHMARKS.md written; harness logs in $out"
