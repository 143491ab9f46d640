# syntax=docker/dockerfile:1
# Build stage: the Rust toolchain plus what rdkafka (librdkafka, OpenSSL) and aws-lc need.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Cargo reads every target the manifest declares, so the benchmark's source comes along even though
# only the binary is built. scripts/docker-build-check.sh runs this stage on exactly these files.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
RUN cargo build --release --locked && strip target/release/regwatch

# Runtime stage: a slim Debian with CA certificates and the OpenSSL runtime librdkafka links.
# Not gcr.io/distroless/cc-debian12: the binary also links libz.so.1 (librdkafka), which that
# image lacks, and the HEALTHCHECK below needs bash.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /etc/regwatch /var/lib/regwatch && chown 10001:10001 /var/lib/regwatch && chmod 0700 /var/lib/regwatch
COPY --from=build /src/target/release/regwatch /usr/local/bin/regwatch
USER 10001:10001
VOLUME ["/etc/regwatch", "/var/lib/regwatch"]
EXPOSE 9188
# Liveness from /healthz without shipping curl: bash's /dev/tcp speaks enough HTTP/1.0.
# Assumes admin_listen's default port 9188; in a container set admin_listen = "0.0.0.0:9188".
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9188 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENV REGWATCH_CONFIG=/etc/regwatch/regwatch.toml
ENTRYPOINT ["/usr/local/bin/regwatch"]
CMD ["run"]
