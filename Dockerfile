# syntax=docker/dockerfile:1
#
# One image with all six Atelier services (and atelier-mint-token); the command picks the
# service, e.g. `docker run atelier atelier-edge`. The edge serves the web client from
# /usr/share/atelier/web (set ATELIER_WEB_DIR to that path).
#
#   docker build -t atelier:local .
#
# No protoc is needed: the protobuf code is compiled by protox, in Rust. Migrations, the
# model catalog and the ComfyUI workflows are embedded in the binaries.

ARG RUST_VERSION=1.95
ARG NODE_VERSION=22
ARG DEBIAN_RELEASE=bookworm

# --------------------------------------------------------------------------- the services
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The workspace's Cargo.lock, exactly (--locked). The registry and target caches survive
# between builds; the binaries are copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p atelier-edge -p atelier-conversation -p atelier-intent \
        -p atelier-enhancement -p atelier-title -p atelier-generation \
        --bins \
    && mkdir -p /out \
    && cp target/release/atelier-edge target/release/atelier-mint-token \
          target/release/atelier-conversation target/release/atelier-intent \
          target/release/atelier-enhancement target/release/atelier-title \
          target/release/atelier-generation /out/

# ------------------------------------------------------------------------- the web client
# What run.sh does: deploy/local/build-web.sh (npm ci from the lock, buf generate,
# tsc --noEmit, esbuild) into web/dist.
FROM node:${NODE_VERSION}-${DEBIAN_RELEASE}-slim AS web
WORKDIR /src
COPY proto proto
COPY web web
COPY deploy/local/build-web.sh deploy/local/build-web.sh
RUN --mount=type=cache,target=/root/.npm \
    bash deploy/local/build-web.sh

# ------------------------------------------------------------------------------- runtime
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 atelier \
    && useradd --system --uid 10001 --gid atelier --home-dir /var/lib/atelier \
        --shell /usr/sbin/nologin atelier \
    && mkdir -p /var/lib/atelier/objects \
    && chown -R atelier:atelier /var/lib/atelier
COPY --from=build /out/ /usr/local/bin/
COPY --from=web /src/web/dist/ /usr/share/atelier/web/
USER 10001:10001
WORKDIR /var/lib/atelier
# Logs as JSON lines on stderr; images in the local store unless ATELIER_S3_BUCKET is set.
ENV ATELIER_LOG_FORMAT=json \
    ATELIER_STORAGE_DIR=/var/lib/atelier/objects
# gRPC (edge 50051, conversation 50052 ... generation 50056), the edge's HTTP port, and
# the metrics ports the deployment files use.
EXPOSE 50051 50052 50053 50054 50055 50056 50080 9151 9152 9153 9154 9155 9156
# Every binary is its own probe: `atelier-<service> --health-check` asks the server of the
# same ATELIER_LISTEN_ADDR for grpc.health.v1 and exits 0 only when it is SERVING.
CMD ["atelier-edge"]
