# syntax=docker/dockerfile:1
# (The syntax line guarantees BuildKit's Dockerfile frontend, which the
# `RUN --mount` cache mounts below require.)

# ---- build ------------------------------------------------------------------
# Same Debian release as the runtime stage, so the binary's glibc matches.
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole workspace is copied (minus .dockerignore): cargo must see every
# member listed in the root Cargo.toml (order-core, order-server, examples,
# benches) to load the workspace, even though only order-server is built.
COPY . .

# Cache mounts keep the crates.io registry and compiled dependencies between
# builds, so a source change recompiles only the workspace crates. The target
# dir is a cache mount, which is not part of the image layer: the binary is
# copied out of it within the same RUN. `sharing=locked` stops two concurrent
# builds from writing the same target dir. `--locked` builds exactly
# Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p order-server \
 && cp target/release/order-server /usr/local/bin/order-server

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# rustls needs no OpenSSL; ca-certificates is kept for TLS connections to
# services (e.g. a managed PostgreSQL with sslmode=require).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Run as an unprivileged user; the numeric UID lets orchestrators verify
# runAsNonRoot. The server writes no files, so it needs no home directory.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home \
      --shell /usr/sbin/nologin app

COPY --from=builder /usr/local/bin/order-server /usr/local/bin/order-server

USER 10001:10001

# Listen on all interfaces inside the container; JSON logs for log collectors.
# DATABASE_URL is deliberately unset: without it the server uses the in-memory
# store (set it to use PostgreSQL).
ENV HOST=0.0.0.0 PORT=3000 LOG_FORMAT=json
EXPOSE 3000

# The server drains in-flight requests and orders on SIGTERM. The exec-form
# ENTRYPOINT makes it PID 1 directly (no shell in between to swallow signals).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/order-server"]
