#!/usr/bin/env bash
# The local demo: the test bed, all five Steward services on the bus, events published by the
# CLI and received by every service, and the audit trail read back with `steward events replay`.
#   scripts/demo.sh          run the demo, then stop the services
#   scripts/demo.sh --keep   leave the services running (logs in $STATE/demo/)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KEEP=${1:-}
"$ROOT/infra/testbed/up.sh"
STATE=${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}
# shellcheck disable=SC1091
source "$STATE/env"
cargo build --workspace --bins --locked
BIN="$ROOT/target/debug"
DEMO="$STATE/demo"
mkdir -p "$DEMO"
export STEWARD_NATS_URL=$STEWARD_TEST_NATS_URL STEWARD_LOG_FORMAT=pretty NO_COLOR=1
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting the five services (production names: stream STEWARD on $STEWARD_NATS_URL)"
pids=()
port=9101
for svc in watcher updater backup health notifier; do
  pkill -f "$BIN/steward-$svc" 2>/dev/null || true
  STEWARD_HTTP_ADDR=127.0.0.1:$port "$BIN/steward-$svc" >"$DEMO/$svc.log" 2>&1 &
  pids+=($!)
  printf '  steward-%-9s pid %-7s http://127.0.0.1:%s/{healthz,readyz,metrics}\n' "$svc" "$!" "$port"
  port=$((port + 1))
done
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
[ "$KEEP" = --keep ] || trap stop EXIT
for p in 9101 9102 9103 9104 9105; do
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$p/readyz")" = 200 ] && break; sleep 0.1
  done
  printf '  :%s /readyz %s\n' "$p" "$(curl -s "127.0.0.1:$p/readyz")"
done
for svc in watcher updater backup health notifier; do
  for _ in $(seq 100); do grep -q consuming "$DEMO/$svc.log" && break; sleep 0.1; done
done

since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sleep 1
A=sha256:$(printf 'a%.0s' $(seq 64)); B=sha256:$(printf 'b%.0s' $(seq 64))
say "the CLI publishes: a registry check, a newer image, a backup request, an update outcome"
"$BIN/steward" check gitea
out=$("$BIN/steward" events publish image.updated --data \
  "{\"container\":\"gitea\",\"image\":\"gitea/gitea:1.22\",\"current_digest\":\"$A\",\"new_digest\":\"$B\",\"new_tag\":\"1.22.7\"}")
echo "$out"
flow=$(echo "$out" | grep -oE '[0-9a-f]{8}-[0-9a-f-]{27}' | head -n 1)
"$BIN/steward" events publish backup.requested --correlation "$flow" --data '{"reason":"pre_update","containers":["gitea"]}'
"$BIN/steward" events publish update.succeeded --correlation "$flow" --data \
  "{\"update_id\":\"$flow\",\"container\":\"gitea\",\"image\":\"gitea/gitea:1.22\",\"from_digest\":\"$A\",\"to_digest\":\"$B\",\"duration_ms\":4200}"
sleep 1

say "what each service received (its own subjects only)"
for svc in watcher updater backup health notifier; do
  echo "steward-$svc:"
  grep received "$DEMO/$svc.log" | sed -E 's/^.*received/    received/' || echo "    (nothing)"
done

say "steward events replay --since $since"
"$BIN/steward" events replay --since "$since"
say "steward events replay --since $since --container gitea --subject 'update.>' --json"
"$BIN/steward" events replay --since "$since" --container gitea --subject 'update.>' --json

if [ "$KEEP" = --keep ]; then
  say "services keep running; logs in $DEMO; stop with: pkill -f $BIN/steward-"
else
  say "stopping the services (SIGTERM: each finishes its event in hand)"
fi
