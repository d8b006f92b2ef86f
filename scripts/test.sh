#!/usr/bin/env bash
# Runs every test: starts the test bed (installing what is missing), builds the binaries,
# runs the whole workspace's tests with the infrastructure code's checks (infra/check.sh)
# beside them, then formatting and lint checks.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# phase NAME COMMAND...: runs COMMAND, then prints how long it took, so a CI log shows where
# the time goes (a failing phase stops the script as before: set -e).
# It also prints how busy the CPUs were meanwhile (from /proc/stat: not idle, not waiting
# on I/O), which says whether running more at once could shorten a phase.
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
phase() {
  local name=$1 start=$SECONDS busy0 total0 busy1 total1
  shift
  read -r busy0 total0 < <(cpu_ticks)
  "$@"
  read -r busy1 total1 < <(cpu_ticks)
  echo "[phase] $name: $((SECONDS - start)) s, CPUs busy $(((busy1 - busy0) * 100 / (total1 - total0 + 1))) %"
}
# The tests start their own NATS, S3, SMTP and registries in containers (steward-testkit's
# `servers`); with STEWARD_TEST_SERVERS=testbed they use the shared ones up.sh then starts.
servers=()
[ "${STEWARD_TEST_SERVERS:-}" != testbed ] || servers=(--servers)
phase testbed "$ROOT/infra/testbed/up.sh" "${servers[@]}"
# shellcheck disable=SC1091
source "${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}/env"
# A one-off build gains nothing from incremental state, which only costs disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Clippy lints the workspace's crates while they are built, as `cargo clippy` does (it runs
# Cargo with clippy-driver as the wrapper of the workspace's rustc), but with code generated:
# a `cargo clippy` of its own compiled every dependency a second time in check mode, about
# 600 CPU s beside the tests on two cores. Every Cargo command below runs with the same
# wrapper, or Cargo would rebuild the workspace's crates (the wrapper is in their
# fingerprints). `-D warnings` makes a lint or a compiler warning fail the build, before any
# test runs.
CLIPPY_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)
[ -n "$CLIPPY_DRIVER" ] || { rustup component add clippy && CLIPPY_DRIVER=$(rustup which clippy-driver); }
export RUSTC_WORKSPACE_WRAPPER=$CLIPPY_DRIVER CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# System tests run the real binaries, which Cargo does not build for another package's tests.
# Every target (tests, examples, benches: what `clippy --all-targets` lints) is built in the
# same invocation: alone, `--bins` resolves the dependencies' features without the
# dev-dependencies' (resolver 2), so the test build compiled about 140 dependencies, every
# workspace library and every binary a second time (the CI's test-build phase was 970 s,
# after a 434 s build).
phase build cargo build --workspace --all-targets --locked
# The compose stack's end-to-end test and the deployer's image test run these images (built
# from the binaries just built).
images() {
  "$ROOT/infra/testbed/stack-images.sh" stand-ins
  "$ROOT/infra/testbed/stack-images.sh" steward debug
}
phase images images
# STEWARD_TEST_ENGINE=podman makes the Podman tests (crates/engine/tests/podman.rs,
# tests/tests/podman_flow.rs, podman_backup.rs, podman_self_update.rs and the socket proxy's
# Podman healthcheck test, on the test bed's service, STEWARD_TEST_PODMAN_SOCKET) required: a
# missing or silent Podman fails them instead of letting them skip (issue 22). The engine
# matrix is the runner's: the binaries scripts/podman-tests.txt lists run a second time with
# Podman's socket as DOCKER_HOST, named "[podman]" in the log (docs/podman.md, "The engine
# matrix").
#
# The infrastructure checks (Terraform: checkov, python-hcl2 tests; Ansible: lint and its
# role and deploy tests; workflows: actionlint; alert rules: promtool) share nothing with the
# Rust tests (their own names, free ports) and wait mostly on Python and containers: they run
# beside the tests, their output kept and shown after. That hides about five minutes of the
# suite's wall time on two cores. (Their `nice 10` counts only inside their own session: with
# the kernel's autogroups they share the CPU with the tests as an equal, which has kept them
# within the tests' time; the lint below is given a lower share explicitly.)
infra_log=$(mktemp)
infra_start=$SECONDS
# In a process group of its own (setsid): an early exit stops the checks and their children.
setsid nice -n 10 "$ROOT/infra/check.sh" >"$infra_log" 2>&1 &
infra_pid=$!
infra_done=
# An early exit (a failing phase) does not leave the checks running behind it: the group gets
# SIGTERM (the Ansible tests' conftest turns it into an interrupt, so their fixtures take
# their compose stacks down), a minute to end, then SIGKILL; what they printed is shown.
stop_infra() {
  [ -z "$infra_done" ] || return 0
  kill -TERM -- "-$infra_pid" 2>/dev/null || true
  for _ in $(seq 60); do
    pgrep -g "$infra_pid" >/dev/null || break
    sleep 1
  done
  kill -KILL -- "-$infra_pid" 2>/dev/null || true
  echo "[infra] stopped early; what it printed:"
  cat "$infra_log"
}
trap 'stop_infra; rm -f "$infra_log"' EXIT
# The tests were compiled by the build phase; this only lists them (Cargo's JSON messages
# name the test binaries, which the runner below takes from them) and builds what `cargo
# build --all-targets` leaves to `cargo test` (nothing, when the wrapper above is the same).
test_bins=$(mktemp)
phase test-build bash -c 'cargo test --workspace --locked --no-run \
  --message-format=json-render-diagnostics >"$1"' _ "$test_bins"
trap 'stop_infra; rm -f "$infra_log" "$test_bins"' EXIT
# Two test binaries at a time, the longest first (scripts/run-tests.py): one at a time left
# the CPUs half idle. Every binary runs even when one fails (as --no-fail-fast).
phase tests env STEWARD_TEST_ENGINE=podman python3 "$ROOT/scripts/run-tests.py" <"$test_bins"
phase doc-tests cargo test --workspace --locked --doc
phase fmt cargo fmt --all -- --check
infra_rc=0
wait "$infra_pid" || infra_rc=$?
infra_done=1
cat "$infra_log"
echo "[phase] infra-check (beside the tests): $((SECONDS - infra_start)) s, exit $infra_rc"
[ "$infra_rc" -eq 0 ] || exit "$infra_rc"
echo "all tests and checks passed ($SECONDS s)"
