#!/usr/bin/env bash
# Runs the seeded random campaign (tests/tests/campaign.rs) over N seeds (default 500),
# starting at seed FIRST (default 1), and prints how many passed and failed, with the replay
# command of each failed seed. The test bed must be up (infra/testbed/up.sh); the servers'
# stand-in images are built here (each test binary starts its own servers from them).
#   scripts/campaign.sh [N] [FIRST]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
N=${1:-500}
FIRST=${2:-1}
# shellcheck disable=SC1091
source "${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}/env"
cargo build --workspace --bins --locked
infra/testbed/stack-images.sh stand-ins
LOG=$(mktemp "${TMPDIR:-/tmp}/steward-campaign.XXXXXX")
trap 'rm -f "$LOG"' EXIT
start=$(date +%s)
set +e
STEWARD_CAMPAIGN_SEEDS=$N STEWARD_CAMPAIGN_FIRST=$FIRST \
  cargo test -p steward-system-tests --locked --test campaign -- --nocapture >"$LOG" 2>&1
status=$?
set -e
elapsed=$(($(date +%s) - start))
passed=$(grep -c '^campaign: seed=[0-9]* ok' "$LOG" || true)
failed=$(grep -c '^campaign: seed=[0-9]* FAILED' "$LOG" || true)
grep -E '^campaign: seed=[0-9]+ FAILED|^  (actions|replay|updater logs)' "$LOG" || true
echo "campaign: seeds $FIRST..$((FIRST + N - 1)): $passed passed, $failed failed in ${elapsed}s"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  tail -n 40 "$LOG"
  echo "campaign: cargo test failed (exit $status) outside a seed"
fi
[ "$status" -eq 0 ]
