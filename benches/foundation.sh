#!/usr/bin/env bash
# Foundation benchmarks (issue #2), Steward and its peer in the same run:
#   1. publish->handled latency through JetStream, p50/p99 over 10,000 events
#   2. replay speed of the stream (100,000 events)
#   3. idle RSS of each service binary (release build; benches/idle_rss.sh)
# Peer: the official Python client (nats-py) doing the same work (benches/peer_nats_py.py).
# Results go to stdout; docs/benchmarks.md records a run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# The shared NATS: Steward's bench and the peer measure against the same server.
"$ROOT/infra/testbed/up.sh" --servers >/dev/null
# shellcheck disable=SC1091
source "${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}/env"
python3 -c 'import nats' 2>/dev/null || pip install -q nats-py >/dev/null 2>&1

echo "== machine: $(nproc) cores, $(uname -r), nats-server $(nats-server --version | awk '{print $NF}')"
echo "== Steward (cargo bench -p steward-runtime --bench bus)"
STEWARD_TEST_SERVERS=testbed cargo bench -q -p steward-runtime --bench bus 2>/dev/null | grep -vE '^\s*$'

echo "== peer: nats-py $(python3 -c 'import importlib.metadata as m; print(m.version("nats-py"))')"
python3 "$ROOT/benches/peer_nats_py.py" "$STEWARD_TEST_NATS_URL" 10000 100000

# Idle RSS (traces off and on), with its own private nats-server and peer.
"$ROOT/benches/idle_rss.sh"
