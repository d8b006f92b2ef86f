#!/usr/bin/env bash
# Builds the local test images (no registry can be reached, so nothing is pulled):
#   steward-test/busybox         FROM scratch + busybox-static
#   steward-test/app:v1|v2|v3    stand-in web app: v1 and v2 healthy with different content,
#                                v3 broken (never answers, so its HEALTHCHECK fails)
#   steward-test/postgres:15     Debian's PostgreSQL 15 behind the official image's interface
# An image that exists is not rebuilt; delete it to force a rebuild.
set -euo pipefail
STATE=${1:-${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[testbed] %s\n' "$*" >&2; }
# Bump when an image's definition changes: existing test beds then rebuild it.
REV=4
have() { [ "$(docker image inspect -f '{{index .Config.Labels "steward.testbed.rev"}}' "$1" 2>/dev/null)" = "$REV" ]; }
build() { # TAG CONTEXT [BUILD ARGS...]
  local tag=$1 ctx=$2; shift 2
  # The legacy builder: the engine here (20.10) has no buildx; its deprecation notice is noise.
  DOCKER_BUILDKIT=0 docker build -q --label "steward.testbed.rev=$REV" -t "$tag" "$@" "$ctx" >"$STATE/logs/build.log" 2>&1 \
    || { cat "$STATE/logs/build.log" >&2; echo "[testbed] error: building $tag failed" >&2; exit 1; }
}

if ! have steward-test/busybox:latest; then
  log "building steward-test/busybox"
  ctx=$(mktemp -d); cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n' >"$ctx/Dockerfile"
  build steward-test/busybox:latest "$ctx"; rm -rf "$ctx"
fi
for v in v1 v2 v3; do
  if ! have "steward-test/app:$v"; then
    log "building steward-test/app:$v"
    build "steward-test/app:$v" "$HERE/images/app" --build-arg "VERSION=$v"
  fi
done

if ! have steward-test/postgres:15; then
  root="$STATE/postgres-root"
  if [ ! -x "$root/usr/lib/postgresql/15/bin/postgres" ]; then
    # The machine's own Debian mirror (the URI ending in /debian), not a third-party repo.
    mirror=$(cat /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
      | grep -oE 'https?://[^ ]+/debian/?( |$)' | tr -d ' ' | head -n 1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    log "debootstrapping PostgreSQL 15 from $mirror (about a minute, once)"
    rm -rf "$root"
    debootstrap --variant=minbase --include=postgresql-15 bookworm "$root" "$mirror" \
      >"$STATE/logs/debootstrap.log" 2>&1 || { tail -n 20 "$STATE/logs/debootstrap.log" >&2; exit 1; }
    # The package's own cluster is not wanted: the entrypoint makes one in PGDATA.
    rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15/main" "$root/var/cache/apt/archives"/*.deb
  fi
  log "importing steward-test/postgres-root:15"
  tar -C "$root" -c . | docker import - steward-test/postgres-root:15 >/dev/null
  log "building steward-test/postgres:15"
  build steward-test/postgres:15 "$HERE/images/postgres"
fi

if ! have steward-test/nginx:latest; then
  # Debian's nginx for the health service's `nginx -t` check: the packages come from the
  # machine's apt sources (a package registry), the root from the PostgreSQL image's.
  log "building steward-test/nginx"
  ctx=$(mktemp -d); cp "$HERE/images/nginx/"* "$ctx/"; mkdir "$ctx/debs"
  (cd "$ctx/debs" && apt-get download nginx nginx-common >"$STATE/logs/nginx-debs.log" 2>&1) \
    || { cat "$STATE/logs/nginx-debs.log" >&2; echo "[testbed] error: apt-get download nginx failed" >&2; exit 1; }
  for d in "$ctx/debs/"*.deb; do dpkg-deb -x "$d" "$ctx/root"; done; rm -rf "$ctx/debs"
  # Only usr/, etc/ and var/: a real lib/ (systemd units) would replace the root's usr-merge link.
  find "$ctx/root" -mindepth 1 -maxdepth 1 ! -name usr ! -name etc ! -name var -exec rm -rf {} +
  build steward-test/nginx:latest "$ctx"; rm -rf "$ctx"
fi
