# The command handler in a small runtime image. Build: docker build -t open-bank/command-handler .
# Not exercised by CI (no Docker engine there); dev/stack runs the same binary locally.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libpq-dev libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
RUN cargo build --release --locked --bin command-handler && strip target/release/command-handler

FROM debian:bookworm-slim
# Only the binary's runtime libraries: libpq (Diesel), OpenSSL (Kafka TLS, registry HTTPS), zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home handler
COPY --from=build /src/target/release/command-handler /usr/local/bin/command-handler
USER 10001
# SIGTERM stops consuming, finishes the batch in flight, commits offsets and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/command-handler"]
