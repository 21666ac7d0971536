# The command handler in a small Alpine (musl) runtime image, non-root.
#   docker build -t open-bank/command-handler-rust:local .
# Not built by CI (there is no Docker engine there): dev/lint-containers lints this file
# (hadolint) and dev/test runs that; dev/stack runs the same binary locally, unboxed.
#
# Expected size, about 15 MB: alpine 3.23 is ~8.5 MB and already carries the musl libc,
# OpenSSL (libssl3, libcrypto3) and zlib the binary links to; ca-certificates and libgcc
# add under 1 MB; the stripped release binary is ~6 MB (5.9 MB for the glibc build:
# opt-level "s", fat LTO, panic=abort, librdkafka and libpq compiled in statically).
#
# Builder and runtime must be the same Alpine release: the binary links dynamically to
# that release's OpenSSL and zlib. Change ALPINE_VERSION, never one FROM alone.
ARG RUST_VERSION=1.95
ARG ALPINE_VERSION=3.23

FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build
# What the C parts of the dependency tree need on musl:
# - build-base (gcc, g++, make, musl-dev) and bash: rdkafka-sys runs librdkafka's own
#   configure script (mklove, a bash script) and make; pq-sys "bundled" compiles libpq
#   with the cc crate. linux-headers: kernel headers, which librdkafka's own Alpine
#   packaging installs too.
# - openssl-dev, zlib-dev, pkgconf: headers and link libraries for openssl-sys (rdkafka
#   "ssl", libpq, native-tls for the registry) and libz-sys (rdkafka "libz"), found
#   through pkg-config by openssl-sys, libz-sys and librdkafka's configure alike.
# No cmake (rdkafka-sys is built without "cmake-build") and no perl (only a vendored
# OpenSSL build needs it; OpenSSL comes from Alpine here).
# Package versions are not pinned (DL3018): Alpine removes superseded package versions
# from its repositories, so pins break the build; the image tags pin the release.
# hadolint ignore=DL3018
RUN apk add --no-cache bash build-base linux-headers openssl-dev pkgconf zlib-dev
# Link dynamically against Alpine's musl, OpenSSL and zlib rather than the musl target's
# default fully static (crt-static) linking: one well-trodden link path (no static
# OpenSSL or zlib archives to force through openssl-sys and libz-sys), OpenSSL taken
# from the runtime image so `apk upgrade` or a base image rebuild patches it, and its
# built-in CA paths (/etc/ssl) are Alpine's own. The image grows by libgcc only, since
# alpine already ships libssl3, libcrypto3 and zlib.
ENV RUSTFLAGS="-C target-feature=-crt-static"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
# BuildKit cache mounts (Docker 23+ builds with BuildKit by default) keep the crates and
# compiled dependencies between builds; the binary is copied out of the cached target.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin command-handler \
 && cp target/release/command-handler /usr/local/bin/command-handler

FROM alpine:${ALPINE_VERSION}
# Only the binary's runtime needs: libssl3 + libcrypto3 (Kafka TLS, registry HTTPS,
# PostgreSQL TLS), zlib (Kafka compression), libgcc (libgcc_s, which Rust's standard
# library links on musl when not static), ca-certificates (TLS without an explicit CA).
# hadolint ignore=DL3018
RUN apk add --no-cache ca-certificates libgcc libssl3 zlib \
 && addgroup -S -g 10001 handler \
 && adduser -S -D -H -u 10001 -G handler -s /sbin/nologin handler
COPY --from=build /usr/local/bin/command-handler /usr/local/bin/command-handler
USER 10001
# HTTP_PORT turns on /health/live, /health/ready and /metrics (on HTTP_BIND_ADDRESS,
# default 0.0.0.0). The health check follows HTTP_PORT at run time (hence the shell);
# busybox wget exits 1 on an HTTP error status or no answer.
ENV HTTP_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "wget -q -T 3 -O /dev/null http://127.0.0.1:${HTTP_PORT}/health/live"]
# SIGTERM stops consuming, finishes the batch in flight, commits offsets and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/command-handler"]
