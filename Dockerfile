# syntax=docker/dockerfile:1.7
#
# One image, six binaries: the five Switchboard services and the `switchboard` CLI.
# There is deliberately no ENTRYPOINT/CMD that starts a service: docker-compose.yml
# and the Kubernetes Deployments pick the binary with `command:`.
#
#   docker build -t switchboard:local .
#   docker run --rm switchboard:local ami-bridge --help
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

############################################################################
# Stage 1: build every binary of the workspace.
############################################################################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build

WORKDIR /src

# No protoc and no OpenSSL are needed: the gRPC code is generated with protox (pure
# Rust) and TLS is rustls. aws-lc-sys builds with the C compiler the rust image has.
COPY . .

# The cargo registry, git checkouts and the target directory live in cache mounts so
# that a rebuild after a source change only recompiles the workspace crates. Because
# a cache mount is not part of the image, the binaries are copied out of it in the
# same RUN.
RUN --mount=type=cache,id=switchboard-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=switchboard-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=switchboard-target,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for bin in ami-bridge im-bridge ws-push chat-store hook-runner switchboard; do \
        cp "target/release/${bin}" /out/ ; \
    done

############################################################################
# Stage 2: the runtime image.
############################################################################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: rustls (via rustls-native-certs / webpki) needs the system roots to
# reach TLS NATS servers, webhooks (hook-runner) and IM providers (im-bridge).
# tzdata is not needed: every timestamp is UTC.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid so that Kubernetes `runAsUser: 10001` and file ownership
# on volumes agree with the image.
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/switchboard \
        --no-create-home --shell /usr/sbin/nologin switchboard \
 && mkdir -p /var/lib/switchboard /etc/switchboard/rules \
 && chown -R 10001:10001 /var/lib/switchboard

# /var/lib/switchboard is owned by 10001 in the image, so a named Docker volume mounted
# there (docker-compose.yml: chat-store-data) starts out writable by the service.

COPY --from=build /out/ /usr/local/bin/

LABEL org.opencontainers.image.title="switchboard" \
      org.opencontainers.image.description="Switchboard services: ami-bridge, im-bridge, ws-push, chat-store, hook-runner, and the switchboard CLI" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV SB_DATA_DIR=/var/lib/switchboard

USER 10001:10001
WORKDIR /var/lib/switchboard

# HTTP (health, metrics, API; ws-push also /ws) and gRPC ports of the five services.
EXPOSE 8081 8082 8083 8084 8085 9081 9082 9083 9084 9085

# No ENTRYPOINT and no service CMD: the orchestrator chooses the binary. Running the
# image bare prints the CLI's help instead of silently starting one service.
CMD ["switchboard", "--help"]
