#!/bin/sh
# The HAProxy front's certificate and process (compose/haproxy.yml).
#
#   front.sh start    the container's command: builds the certificate file, then becomes
#                     HAProxy (master-worker, in the foreground: the master is PID 1).
#   front.sh reload   the renewal hook (label steward.certs.reload, run by the updater after
#                     certbot renewed): builds the file anew, checks the configuration with it
#                     (refused: the old one stays served, this hook fails with HAProxy's
#                     reasons), then SIGUSR2 to the master: a new worker takes the listening
#                     sockets over and serves the new certificate, the old worker finishes the
#                     requests and transfers it holds. No connection is refused; a transfer or
#                     WebSocket still open hard-stop-after (30 min, haproxy.cfg) after the
#                     reload is cut then. "reloaded" once a new worker process runs.
#   front.sh health   the compose healthcheck: GET /healthz on the internal port answered 200
#                     by the running process (not only a configuration that parses).
#
# HAProxy wants the chain and its key in one PEM file: certbot's fullchain.pem then
# privkey.pem, written (mode 600) to a tmpfs, so the key lands on no other disk.
set -eu
CFG=${HAPROXY_CFG:-/usr/local/etc/haproxy/haproxy.cfg}
LIVE=${CERTS_LIVE:-/etc/letsencrypt/live/${GITEA_DOMAIN:-}}
# The same default as haproxy.cfg's.
PEM=${HAPROXY_CERT:-/run/haproxy-tls/front.pem}
MASTER=${HAPROXY_MASTER_PID:-1}
# How long a reload waits for the new worker (seconds).
WAIT=${HAPROXY_RELOAD_WAIT:-30}
# What an interrupted hook leaves is removed: its temporary file, its lock directory.
NEW=
LOCKDIR=
cleanup() {
  [ -z "$NEW" ] || rm -f "$NEW"
  [ -z "$LOCKDIR" ] || rmdir "$LOCKDIR"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# build: the new PEM file beside the served one, under a name of its own (two hooks at once
# never write one file); its path in $NEW.
build() {
  for f in fullchain.pem privkey.pem; do
    [ -s "$LIVE/$f" ] || { echo "front.sh: no $LIVE/$f: issue the certificate first (docs/runbooks.md, \"TLS certificates\")" >&2; exit 1; }
  done
  mkdir -p "$(dirname "$PEM")"
  umask 077
  NEW=$(mktemp "$PEM.XXXXXX")
  cat "$LIVE/fullchain.pem" "$LIVE/privkey.pem" >"$NEW"
}

# lock: one reload at a time (the second one checks and loads what the first left). flock
# where the image has it (the official one: util-linux), else a directory, removed on exit.
lock() {
  mkdir -p "$(dirname "$PEM")"
  l="$(dirname "$PEM")/reload.lock"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$l"
    flock -w "$WAIT" 9 || { echo "front.sh: another reload still holds $l" >&2; exit 1; }
  else
    n=0
    until mkdir "$l.d" 2>/dev/null; do
      n=$((n + 1))
      [ "$n" -le "$WAIT" ] || { echo "front.sh: another reload still holds $l.d" >&2; exit 1; }
      sleep 1
    done
    LOCKDIR="$l.d"
  fi
}

# workers: the master's child processes (its workers), read from /proc (the official image
# has no ps).
workers() {
  for s in /proc/[0-9]*/stat; do
    # pid (comm) state ppid ...: HAProxy's comm has no space.
    read -r pid _ _ ppid _ <"$s" 2>/dev/null || continue
    [ "$ppid" = "$MASTER" ] && echo "$pid"
  done
  return 0
}

# haproxy.cfg redirects HTTP to https://$GITEA_DOMAIN: empty, every redirect would be broken.
case "${1:-}" in
  start | reload)
    [ -n "${GITEA_DOMAIN:-}" ] || { echo "front.sh: GITEA_DOMAIN is not set (.env): HTTP would redirect nowhere" >&2; exit 1; }
    ;;
esac

case "${1:-}" in
  health)
    # The stats frontend's port (HAPROXY_STATS_BIND is [address]:port), asked on loopback.
    port=${HAPROXY_STATS_BIND:-:8405}
    port=${port##*:}
    if command -v bash >/dev/null 2>&1; then
      # The official image (Debian) has bash and no HTTP client: bash's /dev/tcp. The
      # healthcheck's timeout bounds it.
      exec bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && read -r status <&3 && case "$status" in "HTTP/1."?" 200 "*) exit 0 ;; *) exit 1 ;; esac' health "$port"
    fi
    # Busybox images (the test bed's) have no bash but wget (no -T: Debian's busybox crashes on
    # it; the healthcheck's timeout bounds it).
    exec wget -q -O /dev/null "http://127.0.0.1:$port/healthz"
    ;;
  start)
    build
    mv -f "$NEW" "$PEM"
    NEW=
    exec haproxy -W -db -f "$CFG"
    ;;
  reload)
    lock
    build
    # Without -q: on a refusal HAProxy says why ([ALERT] lines, a key that is not the
    # certificate's among them).
    if ! out=$(HAPROXY_CERT="$NEW" haproxy -c -f "$CFG" 2>&1); then
      why=$(printf '%s\n' "$out" | grep -F '[ALERT]' | tail -n 5)
      echo "front.sh: configuration or certificate refused by HAProxy, still serving the old one: ${why:-$out}" >&2
      exit 1
    fi
    mv -f "$NEW" "$PEM"
    NEW=
    before=" $(workers | tr '\n' ' ')"
    kill -USR2 "$MASTER"
    # The master parses the configuration again and forks a new worker: a child of the
    # master that was not there before (it refused the file or died: none comes).
    n=0
    while :; do
      for pid in $(workers); do
        case "$before" in *" $pid "*) ;; *) echo "reloaded"; exit 0 ;; esac
      done
      n=$((n + 1))
      if [ "$n" -gt "$((WAIT * 5))" ]; then
        echo "front.sh: no new worker $WAIT s after SIGUSR2 to HAProxy's master ($MASTER): the reload failed, see its log" >&2
        exit 1
      fi
      sleep 0.2
    done
    ;;
  *)
    echo "usage: front.sh start|reload" >&2
    exit 2
    ;;
esac
