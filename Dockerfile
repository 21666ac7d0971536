# The command handler in a FROM-scratch runtime image: the binary, exactly the shared
# libraries it links (glibc, OpenSSL, zlib, libgcc_s of Debian bookworm), the CA
# certificates and a non-root user (uid 10001). No shell, no package manager.
#   docker build -t open-bank/command-handler-rust:local .
#
# Three stages:
# - build: compiles the release binary on Debian bookworm and collects the runtime
#   root filesystem with dev/image/make-rootfs (binary + `ldd` libraries + CA + user);
# - rootfs: that root filesystem alone;
# - runtime: the image, made only from `rootfs`.
# dev/test builds the runtime stage here with podman from a root filesystem that the same
# script makes from the binary built on that machine (also Debian bookworm), passed as
# `--build-context rootfs=DIR`: the runtime stage it builds and runs is this one.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# The rust image (buildpack-deps) already has what the C parts of the dependency tree
# need: gcc and make for librdkafka (rdkafka-sys runs its configure script, in bash)
# and the bundled libpq, the OpenSSL and zlib headers. No cmake, no perl.
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
# The workspace's other members (scenario, benchmark) are not built, but cargo reads
# their manifests.
COPY bench/Cargo.toml bench/Cargo.toml
COPY bench/src bench/src
COPY dev/scenario dev/scenario
COPY dev/image/make-rootfs dev/image/make-rootfs
# BuildKit cache mounts (Docker 23+ builds with BuildKit by default) keep the crates and
# compiled dependencies between builds; the root filesystem is made from the cached target.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p open-bank-command-handler \
 && dev/image/make-rootfs target/release/command-handler /rootfs

FROM scratch AS rootfs
COPY --from=build /rootfs/ /

FROM scratch AS runtime
# The `rootfs` stage is nothing but the image's files, made to be copied whole (and
# replaced by dev/test's own, made the same way).
# hadolint ignore=DL3067
COPY --from=rootfs / /
USER 10001:10001
# OpenSSL's default CA file under Debian's paths is a link the image does not carry;
# this names the bundle itself (Kafka TLS without KAFKA_SSL_CA_LOCATION, registry HTTPS).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# HTTP_PORT turns on /health/live, /health/ready and /metrics (on HTTP_BIND_ADDRESS,
# default 0.0.0.0); the health check asks /health/live through the binary itself.
ENV HTTP_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/command-handler", "health"]
# SIGTERM stops consuming, finishes the batch in flight, commits offsets and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/command-handler"]
