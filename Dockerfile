# The Sluice image: `sluice` as the entrypoint, run as a non-root user, healthy while /healthz answers.
#
#   docker build -t sluice .                                        # from source (multi-stage)
#   docker run --network host -e DATABASE_URL=postgres://… -e REDIS_URL=redis://… \
#       -e SLUICE_JWT_HS256_SECRET_FILE=/run/secrets/jwt sluice
#
# BUILDER_IMAGE and RUNTIME_IMAGE are build arguments so that a machine without a registry builds on
# images it made itself (.ci/test-images.sh); everyone else gets the official Rust and Debian ones.
# The `runtime` stage comes first and stands alone, so `--target runtime` builds it without a Rust
# image even with the classic builder: tests/image.rs runs it with the test build's binary mounted
# at /usr/local/bin/sluice, to test the image without a second, release compile.

ARG BUILDER_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: rediss:// and PostgreSQL over TLS; curl: the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --home-dir /var/lib/sluice --create-home \
        --shell /usr/sbin/nologin sluice
WORKDIR /var/lib/sluice
# In a container the listeners face the pod network; the embedded default (SQLite, generated
# secret) lands in the working directory.
ENV SLUICE_GRPC_ADDR=0.0.0.0:8081 \
    SLUICE_HTTP_ADDR=0.0.0.0:9090 \
    SLUICE_LOG_FORMAT=json
EXPOSE 8081 9090
USER 10001:10001
# /healthz on the port SLUICE_HTTP_ADDR names (a deployment may move it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "curl --fail --silent --max-time 2 \"http://127.0.0.1:${SLUICE_HTTP_ADDR##*:}/healthz\""]
ENTRYPOINT ["sluice"]
CMD ["serve"]

# ---------------------------------------------------------------- build
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# No database at build time: every query is built at run time.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bin sluice \
    && install -m 0755 target/release/sluice /usr/local/bin/sluice

# ---------------------------------------------------------------- default: from source
FROM runtime
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
