#!/usr/bin/env bash
# The whole engine matrix (issue 22): every binary scripts/podman-tests.txt lists, its `full:`
# lines included, on Docker and on Podman, with nothing else running (CI runs a sample beside
# the rest of the suite). Starts the test bed; builds what it needs. Arguments go to every
# test binary. Prints each binary's time; exit 0 when all passed. STEWARD_TEST_MATRIX=podman
# runs the Podman leg only (the Docker leg is the suite's own: scripts/test.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
servers=()
[ "${STEWARD_TEST_SERVERS:-}" != testbed ] || servers=(--servers)
"$ROOT/infra/testbed/up.sh" "${servers[@]}"
# shellcheck disable=SC1091
source "${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}/env"
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
CLIPPY_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)
export RUSTC_WORKSPACE_WRAPPER=$CLIPPY_DRIVER CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
cargo build --workspace --all-targets --locked
# The servers' stand-in images (each binary starts its own) and the stack's.
"$ROOT/infra/testbed/stack-images.sh" stand-ins
"$ROOT/infra/testbed/stack-images.sh" steward debug
# Only the packages the list names: their binaries, each run on both engines.
packages=$(grep -v '^\s*#' scripts/podman-tests.txt | sed 's/^full: *//' | awk 'NF {print $1}' \
  | cut -d: -f1 | sort -u | while read -r dir; do
      sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n 1
    done)
bins=$(mktemp)
trap 'rm -f "$bins"' EXIT
# shellcheck disable=SC2046
cargo test --locked --no-run --message-format=json-render-diagnostics \
  $(printf -- '-p %s ' $packages) >"$bins"
case ${STEWARD_TEST_MATRIX:=full} in
  full | podman) ;;
  *) echo "STEWARD_TEST_MATRIX=$STEWARD_TEST_MATRIX: expected full (the default) or podman" >&2; exit 2 ;;
esac
STEWARD_TEST_MATRIX=$STEWARD_TEST_MATRIX STEWARD_TEST_ENGINE=podman python3 scripts/run-tests.py "$@" <"$bins"
