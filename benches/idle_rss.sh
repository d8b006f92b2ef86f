#!/usr/bin/env bash
# Idle RSS of each service binary (release build), on a private nats-server, measured 5 s
# after /readyz answers 200; each service twice: traces off (no OTEL_* variable, the default)
# and on (OTEL_EXPORTER_OTLP_ENDPOINT set: the exporter and its batch thread exist). Peer: a
# nats-py process holding one durable pull subscription. Run by benches/foundation.sh, or alone
# (the test bed's nats-server binary only; results to stdout, recorded in docs/benchmarks.md):
# benches/idle_rss.sh [SERVICE...] (default: all five).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
python3 -c 'import nats' 2>/dev/null || pip install -q nats-py >/dev/null 2>&1
echo "== idle RSS (private nats-server; measured 5 s after /readyz answers 200)"
# Services to measure: the arguments, or all five.
services=("${@:-watcher updater backup health notifier}")
read -r -a services <<<"${services[*]}"
cargo build -q --release $(printf -- '-p steward-%s ' "${services[@]}") -p steward-cli --bins
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d)
nats_port=$(port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$tmp/nats" >/dev/null 2>&1 &
nats_pid=$!
trap 'kill $nats_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
# The stream, the consumers and the buckets (services only look them up), and the key the
# backup service needs to start.
"$BIN/steward" setup --nats-url "nats://127.0.0.1:$nats_port" >/dev/null
openssl genpkey -algorithm ed25519 -out "$tmp/signing.pem" 2>/dev/null
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Traces on: an endpoint on loopback where nothing listens (an idle service exports nothing;
# what is measured is the cost of the exporter, its client and its thread being there).
otlp="http://127.0.0.1:$(port)"
for svc in "${services[@]}"; do
  for traces in off on; do
    http=$(port)
    endpoint=""
    [ "$traces" = on ] && endpoint=$otlp
    # The backup service needs a bucket; at start it looks at it (copies to finish, chunks to
    # collect, the newest verified backup): an endpoint on loopback where nothing listens, so
    # nothing leaves this machine. Two malloc arenas and a fixed 1 MiB mmap threshold, as the
    # image runs every service (ARENAS=default: glibc's own for both).
    # The notifier needs a channel; idle, it never calls it.
    arenas=()
    [ "${ARENAS:-2}" = default ] || arenas=(MALLOC_ARENA_MAX="${ARENAS:-2}" MALLOC_MMAP_THRESHOLD_=262144)
    env "${arenas[@]}" OTEL_EXPORTER_OTLP_ENDPOINT=$endpoint \
    STEWARD_WEBHOOK_URL=http://127.0.0.1:9/unused \
    AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
    STEWARD_S3_BUCKET=steward-bench-idle STEWARD_SCOPE=steward-bench-idle \
    STEWARD_S3_ENDPOINT="http://127.0.0.1:$(port)" \
    STEWARD_BACKUP_SIGNING_KEY_FILE="$tmp/signing.pem" \
    STEWARD_NATS_URL="nats://127.0.0.1:$nats_port" STEWARD_HTTP_ADDR="127.0.0.1:$http" \
      "$BIN/steward-$svc" 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$http/readyz")" = 200 ] && break; sleep 0.1
    done
    sleep 5
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "  steward-$svc traces $traces: exited before it was measured" >&2; exit 1
    fi
    printf '  steward-%-9s traces %-3s %6.1f MiB\n' "$svc" "$traces" "$(echo "$(rss_kib $pid) / 1024" | bc -l)"
    kill -TERM $pid; wait $pid 2>/dev/null || true
  done
done
python3 - "$nats_port" <<'PY' &
import asyncio, sys, nats
async def main():
    nc = await nats.connect(f"nats://127.0.0.1:{sys.argv[1]}")
    js = nc.jetstream()
    await js.add_stream(name="PEERIDLE", subjects=["peeridle.>"])
    await js.pull_subscribe("peeridle.x", durable="idle")
    await asyncio.sleep(30)
asyncio.run(main())
PY
py=$!
sleep 5
printf '  peer: nats-py idle pull consumer %6.1f MiB\n' "$(echo "$(rss_kib $py) / 1024" | bc -l)"
kill $py 2>/dev/null || true
