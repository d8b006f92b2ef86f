# One image with every Steward binary; each compose service runs its own entrypoint
# (steward-watcher, steward-updater, steward-backup, steward-health, steward-notifier, the
# Docker socket proxy steward-sockproxy; the CLI is `steward`).
# Build: docker build -t steward/steward:0.1.0 .
# The deployer's image (the same, plus git, docker-compose and ssh, which the others never
# need): docker build --target deployer -t steward/deployer:0.1.0 .
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
       target/release/steward-sockproxy target/release/steward-deployer /out/

FROM debian:bookworm-slim AS runtime
# CA roots for S3, registries and SMTP over TLS; zone data for schedules and update windows.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 steward \
 && useradd --system --uid 10001 --gid steward --home-dir /nonexistent --shell /usr/sbin/nologin steward \
 && mkdir -p /run/steward-docker/watcher /run/steward-docker/health /run/steward-docker/updater \
             /run/steward-docker/backup /run/steward-docker/deployer \
 && chown -R 10001:10001 /run/steward-docker
# The socket proxy's sockets: a fresh compose volume mounted here takes this owner, so the
# proxy (user 10001) can create its socket and the service (user 10001) can connect to it.
COPY --from=build /out/ /usr/local/bin/
# glibc's malloc makes an arena per busy thread (8 per core); zstd's workers then hold memory
# the backup's fixed buffers never needed. Two arenas keep steward-backup's peak flat. A
# fixed mmap threshold (256 KiB, the smallest chunk) keeps the multipart parts (8 MiB) and
# every chunk buffer in mappings returned when freed: glibc's moving threshold otherwise
# rises to the part size after the first is freed and keeps later ones in the arenas
# (measured: peak 69 MiB against 58), and at 1 MiB the smaller chunks fragmented them (a
# 1 GiB incremental restore: 57.8 MiB against 50.6; benchmarks.md).
ENV STEWARD_HTTP_ADDR=0.0.0.0:9100 STEWARD_LOG_FORMAT=json MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=262144
# Not root. Only the socket proxy joins the Docker socket's group (compose: group_add).
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["steward", "healthcheck"]
CMD ["steward", "--help"]

# The deployer: git (its checkouts, and commits of image updates), docker-compose (Debian's
# 1.29, the one the tests run), ssh for `ssh://` repositories. HOME for git's own files.
FROM runtime AS deployer
USER root
# ssh reads ~/.ssh from the user's passwd entry, not $HOME: the user gets a real home here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git docker-compose openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/steward/deploy /home/steward \
 && chown 10001:10001 /var/lib/steward/deploy /home/steward \
 && usermod -d /home/steward steward
ENV HOME=/home/steward
USER 10001:10001
CMD ["steward-deployer"]

# The default target: every other service's image. (The legacy builder, without BuildKit,
# also builds the deployer stage on the way; BuildKit builds only what the target needs.)
FROM runtime AS steward
