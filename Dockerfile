# Aura in a container. CI has no container engine, so `.ci/docker-context` builds this file's
# build stage from exactly what its COPY lines copy; keep those lines plain (`COPY src… dest`).
#
#   docker build -t aura .
#   docker run -p 5005:5005 -v aura-data:/data aura
#
# Build stage: compiles with the committed .sqlx query data, so no database is needed.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .sqlx .sqlx
COPY migrations migrations
COPY src src
# The web UI, embedded with include_str! (tests/api/docs.rs checks that every embedded file is copied).
COPY assets assets
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bin aura

# Run stage: Debian slim with ffmpeg (flite, drawtext, x264/x265, vp9, av1) and fonts.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg fonts-dejavu-core ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin aura \
 && mkdir -p /data && chown aura /data
COPY --from=build /src/target/release/aura /usr/local/bin/aura
USER aura
VOLUME ["/data"]
EXPOSE 5005
# Inside the container the server must listen on all interfaces, and `aura serve` refuses a
# non-loopback address without tokens: create one first (`docker run -v aura-data:/data aura
# token create NAME`; the tokens file lives in /data), or set AURA_INSECURE_OPEN=true, only on a
# network you trust.
ENV AURA_ADDR=0.0.0.0:5005 \
    AURA_DATA_DIR=/data \
    AURA_LOG_FORMAT=json
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:5005/api/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["aura"]
CMD ["serve"]
