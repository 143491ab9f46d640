# syntax=docker/dockerfile:1
# Build stage: the Rust toolchain plus what rdkafka (librdkafka, OpenSSL) and aws-lc need.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/regwatch

# Runtime stage: a slim Debian with CA certificates and the OpenSSL runtime librdkafka links.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /etc/regwatch /var/lib/regwatch && chown 10001:10001 /var/lib/regwatch && chmod 0700 /var/lib/regwatch
COPY --from=build /src/target/release/regwatch /usr/local/bin/regwatch
USER 10001:10001
VOLUME ["/etc/regwatch", "/var/lib/regwatch"]
ENV REGWATCH_CONFIG=/etc/regwatch/regwatch.toml
ENTRYPOINT ["/usr/local/bin/regwatch"]
CMD ["run"]
