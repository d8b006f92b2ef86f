# One image with every Steward binary; each compose service runs its own entrypoint
# (steward-watcher, steward-updater, steward-backup, steward-health, steward-notifier, the
# Docker socket proxy steward-sockproxy; the CLI is `steward`).
# Build: docker build -t steward/steward:0.1.0 .
#
# infra/testbed/stack-images.sh builds the same image on machines that cannot pull these bases
# (keep its final stage in step with this one).

FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/steward target/release/steward-watcher target/release/steward-updater \
       target/release/steward-backup target/release/steward-health target/release/steward-notifier \
       target/release/steward-sockproxy /out/

FROM debian:bookworm-slim
# CA roots for S3, registries and SMTP over TLS; zone data for schedules and update windows.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 steward \
 && useradd --system --uid 10001 --gid steward --home-dir /nonexistent --shell /usr/sbin/nologin steward \
 && mkdir -p /run/steward-docker/watcher /run/steward-docker/health /run/steward-docker/updater \
             /run/steward-docker/backup \
 && chown -R 10001:10001 /run/steward-docker
# The socket proxy's sockets: a fresh compose volume mounted here takes this owner, so the
# proxy (user 10001) can create its socket and the service (user 10001) can connect to it.
COPY --from=build /out/ /usr/local/bin/
# glibc's malloc makes an arena per busy thread (8 per core); zstd's workers then hold memory
# the backup's fixed buffers never needed. Two arenas keep steward-backup's peak flat. A
# fixed mmap threshold (1 MiB) keeps the multipart parts (8 MiB) in mappings returned when
# freed: glibc's moving threshold otherwise rises to the part size after the first is freed
# and keeps later ones in the arenas (measured: peak 69 MiB against 58, benchmarks.md).
ENV STEWARD_HTTP_ADDR=0.0.0.0:9100 STEWARD_LOG_FORMAT=json MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=1048576
# Not root. Only the socket proxy joins the Docker socket's group (compose: group_add).
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["steward", "healthcheck"]
CMD ["steward", "--help"]
