#!/bin/sh
# The HAProxy front's certificate and process (compose/haproxy.yml).
#
#   front.sh start    the container's command: builds the certificate file, then becomes
#                     HAProxy (master-worker, in the foreground: the master is PID 1).
#   front.sh reload   the renewal hook (label steward.certs.reload, run by the updater after
#                     certbot renewed): builds the file anew, checks the configuration with it
#                     (a bad certificate leaves the old one served and this hook failing), then
#                     SIGUSR2 to the master: a new worker takes the listening sockets over and
#                     serves the new certificate, the old worker finishes the requests and
#                     transfers it holds (at most hard-stop-after). No connection is refused
#                     or cut.
#
# HAProxy wants the chain and its key in one PEM file: certbot's fullchain.pem then
# privkey.pem, written (mode 600) to a tmpfs, so the key lands on no other disk.
set -eu
CFG=${HAPROXY_CFG:-/usr/local/etc/haproxy/haproxy.cfg}
LIVE=${CERTS_LIVE:-/etc/letsencrypt/live/${GITEA_DOMAIN:-}}
# The same default as haproxy.cfg's.
PEM=${HAPROXY_CERT:-/run/haproxy-tls/front.pem}

build() {
  for f in fullchain.pem privkey.pem; do
    [ -s "$LIVE/$f" ] || { echo "front.sh: no $LIVE/$f: issue the certificate first (docs/runbooks.md, \"TLS certificates\")" >&2; exit 1; }
  done
  mkdir -p "$(dirname "$PEM")"
  umask 077
  cat "$LIVE/fullchain.pem" "$LIVE/privkey.pem" >"$PEM.new"
}

case "${1:-}" in
  start)
    build
    mv -f "$PEM.new" "$PEM"
    exec haproxy -W -db -f "$CFG"
    ;;
  reload)
    build
    if ! out=$(HAPROXY_CERT="$PEM.new" haproxy -c -q -f "$CFG" 2>&1); then
      rm -f "$PEM.new"
      echo "front.sh: HAProxy refuses the renewed certificate, still serving the old one: $out" >&2
      exit 1
    fi
    mv -f "$PEM.new" "$PEM"
    kill -USR2 "${HAPROXY_MASTER_PID:-1}"
    echo "reloaded"
    ;;
  *)
    echo "usage: front.sh start|reload" >&2
    exit 2
    ;;
esac
