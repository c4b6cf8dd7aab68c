# ai-proxy: multi-stage build. Runtime image: slim Debian, non-root, config at
# /etc/ai-proxy/ai-proxy.yaml (mount your own over it, or set ENDPOINTS/API_KEY in env).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY mock ./mock
COPY benches ./benches
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ai-proxy
COPY --from=build /src/target/release/ai-proxy /usr/local/bin/ai-proxy
COPY --from=build /src/target/release/ai-proxy-mock /usr/local/bin/ai-proxy-mock
COPY conf/ai-proxy.yaml /etc/ai-proxy/ai-proxy.yaml
USER ai-proxy
ENV RUST_LOG=info
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT:-8000}/health" || exit 1
# SIGTERM drains: requests in flight get up to shutdown_grace_secs, and the process exits as
# soon as they end. Docker kills after 10 s unless `docker run --stop-timeout` says longer.
# SIGHUP reloads the config; see README, Operations.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ai-proxy"]
CMD ["--config", "/etc/ai-proxy/ai-proxy.yaml"]
