#!/usr/bin/env bash
# Foundation benchmarks (issue #2), Steward and its peer in the same run:
#   1. publish->handled latency through JetStream, p50/p99 over 10,000 events
#   2. replay speed of the stream (100,000 events)
#   3. idle RSS of each service binary (release build)
# Peer: the official Python client (nats-py) doing the same work (benches/peer_nats_py.py).
# Results go to stdout; docs/benchmarks.md records a run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/infra/testbed/up.sh" >/dev/null
# shellcheck disable=SC1091
source "${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}/env"
python3 -c 'import nats' 2>/dev/null || pip install -q nats-py >/dev/null 2>&1

echo "== machine: $(nproc) cores, $(uname -r), nats-server $(nats-server --version | awk '{print $NF}')"
echo "== Steward (cargo bench -p steward-runtime --bench bus)"
cargo bench -q -p steward-runtime --bench bus 2>/dev/null | grep -vE '^\s*$'

echo "== peer: nats-py $(python3 -c 'import importlib.metadata as m; print(m.version("nats-py"))')"
python3 "$ROOT/benches/peer_nats_py.py" "$STEWARD_TEST_NATS_URL" 10000 100000

echo "== idle RSS (private nats-server; measured 5 s after /readyz answers 200)"
cargo build -q --release --bins
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d)
nats_port=$(port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$tmp/nats" >/dev/null 2>&1 &
nats_pid=$!
trap 'kill $nats_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
for svc in watcher updater backup health notifier; do
  http=$(port)
  # The backup service needs a bucket name to start; idle, it never contacts S3 (and with
  # a fixed region and no instance metadata, it could not send traffic off this machine).
  # The notifier needs a channel; idle, it never calls it.
  STEWARD_WEBHOOK_URL=http://127.0.0.1:9/unused \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  STEWARD_S3_BUCKET=steward-bench-idle STEWARD_SCOPE=steward-bench-idle \
  STEWARD_NATS_URL="nats://127.0.0.1:$nats_port" STEWARD_HTTP_ADDR="127.0.0.1:$http" \
    "$ROOT/target/release/steward-$svc" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$http/readyz")" = 200 ] && break; sleep 0.1
  done
  sleep 5
  printf '  steward-%-9s %6.1f MiB\n' "$svc" "$(echo "$(rss_kib $pid) / 1024" | bc -l)"
  kill -TERM $pid; wait $pid 2>/dev/null || true
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
