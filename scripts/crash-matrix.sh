#!/usr/bin/env bash
# Runs the crash matrices in full (STEWARD_CRASH_POINTS=all): every kill point in every
# variant of tests/tests/crash_points.rs, backup_crash.rs, notify_crash.rs, self_update.rs,
# deploy_crash.rs and deploy_start_first.rs. CI (scripts/test.sh) runs a sample of each that rotates with the day
# (docs/reliability.md, "What CI runs"). Well over an hour on the 2-core test machine. The test
# bed must be up (infra/testbed/up.sh) with the servers' stand-in images
# (infra/testbed/stack-images.sh stand-ins).
#   scripts/crash-matrix.sh [TEST...]        (default: the six above)
# STEWARD_CRASH_ONLY=word,... restricts crash_points and backup_crash's scheduled and
# container-removed tests to the points whose names contain a word.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck disable=SC1091
source "${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}/env"
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The matrices run the real binaries; the self-update's runs the debug image built from them.
cargo build --workspace --bins --locked
# self_update starts its own NATS from the stand-in image (built once per revision).
"$ROOT/infra/testbed/stack-images.sh" stand-ins
"$ROOT/infra/testbed/stack-images.sh" steward debug
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(crash_points backup_crash notify_crash self_update deploy_crash deploy_start_first)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
start=$(date +%s)
STEWARD_CRASH_POINTS=all cargo test -p steward-system-tests --locked --no-fail-fast "${args[@]}" \
  -- --nocapture
echo "crash matrices (${tests[*]}): every point passed in $(($(date +%s) - start))s"
