#!/usr/bin/env bash
# The compose stack's numbers: size of the Steward image built from release binaries, time from
# `docker-compose up` to every service healthy, and each Steward service's idle RSS in the
# stack. Runs the end-to-end test (tests/tests/compose_stack.rs) with the release image.
# Usage: benches/stack.sh   (the test bed must be up: infra/testbed/up.sh; the test starts its
# own servers from the stand-in images built here)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck disable=SC1091
source "${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}/env"
export CARGO_INCREMENTAL=0
cargo build --release --workspace --bins --locked
cargo build --workspace --bins --locked
infra/testbed/stack-images.sh stand-ins
infra/testbed/stack-images.sh steward release
size=$(docker image inspect -f '{{.Size}}' steward-local/steward:release)
echo "steward image (release, FROM scratch + libraries): $((size / 1000000)) MB"
for b in steward steward-watcher steward-updater steward-backup steward-health steward-notifier; do
  printf '  %-18s %s MB\n' "$b" "$(( $(stat -c %s "target/release/$b") / 1000000 ))"
done
STEWARD_STACK_IMAGE=steward-local/steward:release \
  cargo test -p steward-system-tests --test compose_stack --locked -- --nocapture 2>&1 \
  | grep -E '^(stack healthy|idle )|^ *[0-9.]+ s  |test result'
