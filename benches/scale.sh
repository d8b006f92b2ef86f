#!/usr/bin/env bash
# Issue 23's numbers (docs/scaling.md): what grows with hosts and containers, measured with the
# real steward-watcher, steward-notifier and steward CLI against the test bed's registry,
# dockerd and SMTP server, on a private nats-server (a free loopback port) running the users
# and permissions `steward nats-authorization` generates for STEWARD_HOSTS=sim-01..sim-NN.
#
# SIMULATION: AGENTS watcher processes (STEWARD_HOST=sim-01.., each logged in as its own
# `watcher-sim-XX` user) all look at ONE engine (the test bed's dockerd) and the same
# CONTAINERS containers; one notifier is the centre. No updater, backup or health agent runs:
# their per-day traffic is derived (printed as such) from the encoded sizes of the catalog's
# sample events and the stream's per-message overhead measured here.
#
# Phases: (1) one agent's check of CONTAINERS containers with news, then one without: the bus
# messages by subject, the stream's growth; (2) ROUNDS rounds of a new digest pushed to every
# container's tag and `steward check` to every host: AGENTS x CONTAINERS image.updated per
# round, the centre's CPU and peak memory, publish->delivery latency at a probe subscriber,
# the mail the notifier sent. Every wait is bounded; everything started is removed at exit.
#
# LEAVES=1: the leaf-node topology instead of one server (docs/scaling.md, "The choice"): a hub
# (the centre's nats-server, domain `hub`) and one leaf nats-server per simulated host (domain
# sim-XX) linked to it on loopback, each configured by `steward nats-config --no-tls` and
# `steward nats-authorization` and provisioned by its own `steward setup`; each watcher on its
# host's leaf, the notifier and the CLI on the hub. The probe then watches the hub (the centre's
# share), and a second probe host sim-01's leaf for the one-agent check.
#
# benches/scale.sh [AGENTS] (default 50); CONTAINERS (3), ROUNDS (3), LEAVES (0) from the
# environment.
# Needs the test bed with its shared servers (infra/testbed/up.sh --servers; source
# /var/tmp/steward-testbed/env) and nats-py (pip install nats-py).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
AGENTS=${1:-50}
CONTAINERS=${CONTAINERS:-3}
ROUNDS=${ROUNDS:-3}
LEAVES=${LEAVES:-0}
PROFILE=${PROFILE:-debug}
: "${STEWARD_TEST_REGISTRY:?run infra/testbed/up.sh --servers, then source /var/tmp/steward-testbed/env}"
: "${STEWARD_TEST_SMTP:?run infra/testbed/up.sh --servers, then source /var/tmp/steward-testbed/env}"
: "${STEWARD_TEST_MAILDIR:?run infra/testbed/up.sh --servers, then source /var/tmp/steward-testbed/env}"
[ "$AGENTS" -ge 1 ] && [ "$AGENTS" -le 99 ] || { echo "AGENTS: 1..99" >&2; exit 2; }
python3 -c 'import nats' 2>/dev/null || { echo "needs nats-py: pip install nats-py" >&2; exit 2; }
release=()
[ "$PROFILE" = release ] && release=(--release)
cargo build -q "${release[@]}" -p steward-watcher -p steward-notifier -p steward-cli --bins
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
PROBE="python3 $ROOT/benches/scale_probe.py"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
ticks=$(getconf CLK_TCK)
# CPU seconds (user + system) a process has used so far, and its peak RSS in KiB.
cpu_s() { awk -v t="$ticks" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

id=scale$$$(date +%s)
tmp=$(mktemp -d)
pids=()
watcher_pids=()
leaf_pids=()
containers=()
images=()
main_pid=$BASHPID
cleanup() {
  # Background jobs (the services) are subshells of this one: only the script itself cleans up.
  [ "$BASHPID" = "$main_pid" ] || return 0
  # The services first, while NATS still answers (they finish their work and exit), NATS last.
  # Each given 25 s (a service's shutdown grace is 20 s), then killed: the wait is bounded.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 250); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  [ ${#containers[@]} -eq 0 ] || docker rm -f "${containers[@]}" >/dev/null 2>&1 || true
  [ ${#images[@]} -eq 0 ] || docker rmi "${images[@]}" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
# Ctrl-C and SIGTERM go through the same clean-up, services before their nats-server (which
# runs in a session of its own below, so a terminal's Ctrl-C does not reach it first).
trap 'exit 130' INT TERM

hosts=$(for i in $(seq -f %02g 1 "$AGENTS"); do printf 'sim-%s,' "$i"; done)
hosts=${hosts%,}
export STEWARD_HOSTS=$hosts

# A server's configuration in DIR for STEWARD_NATS_DOMAIN=$2 (empty: one server): the generated
# users plus the bench's observer (`probe`, allowed everything), and under the leaf topology the
# `nats.conf` `steward nats-config` prints (the link in the clear: loopback).
configure() {
  local dir=$1 domain=$2
  shift 2
  mkdir -p "$dir"
  (
    [ -n "$domain" ] && export STEWARD_NATS_DOMAIN=$domain
    "$BIN/steward" nats-authorization >"$dir/authorization.conf"
    if [ -n "$domain" ]; then
      "$BIN/steward" nats-config --no-tls --http-port 0 --store-dir "$dir/js" "$@" >"$dir/nats.conf"
    else
      printf 'include authorization.conf\n' >"$dir/nats.conf"
    fi
  )
  sed -i 's/^  users = \[$/  users = [\n    { user: probe, password: probe }/' "$dir/authorization.conf"
  grep -q 'user: probe' "$dir/authorization.conf" || { echo "could not add the probe user" >&2; exit 1; }
}
# Each generated user's password variable (from a server's authorization), set to pw-<user>.
declare -A passwords
learn_passwords() {
  while read -r user var; do
    passwords[$user]=pw-$user
    export "${var#\$}=pw-$user"
  done < <(awk '/user:/ {u=$2} /password: \$/ {print u, $2}' "$1")
}
listening() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# A participant's login at URL, as `env` arguments (so `env $(login_at URL X) cmd &` leaves $!
# the command's).
login_at() { echo "STEWARD_NATS_URL=$1 STEWARD_NATS_USER=$2 STEWARD_NATS_PASSWORD=${passwords[$2]}"; }

nats_port=$(port)
URL=nats://127.0.0.1:$nats_port
declare -A leaf_url
if [ "$LEAVES" = 1 ]; then
  # The hub needs nats-server 2.10.14 or later (docs/runbooks.md): the test bed's copy.
  nats_bin=${STEWARD_TEST_NATS_SERVER_2_10:-nats-server}
  hub_domain=hub
  link_port=$(port)
  configure "$tmp/hub" hub --leaf-listen "127.0.0.1:$link_port"
  learn_passwords "$tmp/hub/authorization.conf"
  # The servers run in sessions of their own, so a terminal's Ctrl-C does not reach them first.
  setsid "$nats_bin" -c "$tmp/hub/nats.conf" -a 127.0.0.1 -p "$nats_port" >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  pids+=("$nats_pid")
  listening "$nats_port" || { echo "the hub did not listen" >&2; exit 1; }
  for i in $(seq -f %02g 1 "$AGENTS"); do
    h=sim-$i
    configure "$tmp/leaf-$i" "$h"
    learn_passwords "$tmp/leaf-$i/authorization.conf"
    p=$(port)
    leaf_url[$h]=nats://127.0.0.1:$p
    STEWARD_LEAF_URL="\"nats-leaf://leaf-$h:${passwords[leaf-$h]}@127.0.0.1:$link_port\"" \
      setsid "$nats_bin" -c "$tmp/leaf-$i/nats.conf" -a 127.0.0.1 -p "$p" >"$tmp/leaf-$i.log" 2>&1 &
    pids+=($!)
    leaf_pids+=($!)
  done
  for i in $(seq -f %02g 1 "$AGENTS"); do
    h=sim-$i
    listening "${leaf_url[$h]##*:}" || { echo "$h's leaf did not listen" >&2; tail -5 "$tmp/leaf-$i.log" >&2; exit 1; }
    # shellcheck disable=SC2046 # login_at's words are meant to split
    env $(login_at "${leaf_url[$h]}" setup) STEWARD_NATS_DOMAIN="$h" "$BIN/steward" setup >/dev/null
  done
  # shellcheck disable=SC2046
  env $(login_at "$URL" setup) STEWARD_NATS_DOMAIN=hub "$BIN/steward" setup >/dev/null
  linked=0
  for _ in $(seq 300); do
    linked=$(grep -c "Leafnode connection created" "$tmp/nats.log" || true)
    [ "$linked" -ge "$AGENTS" ] && break
    sleep 0.1
  done
  [ "$linked" -ge "$AGENTS" ] || { echo "only $linked of $AGENTS leaves linked to the hub" >&2; exit 1; }
else
  hub_domain=
  configure "$tmp" ""
  learn_passwords "$tmp/authorization.conf"
  setsid nats-server -c "$tmp/nats.conf" -a 127.0.0.1 -p "$nats_port" -js -sd "$tmp/js" \
    >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  pids+=("$nats_pid")
  listening "$nats_port" || { echo "nats-server did not listen" >&2; exit 1; }
  for i in $(seq -f %02g 1 "$AGENTS"); do leaf_url[sim-$i]=$URL; done
  # shellcheck disable=SC2046
  env $(login_at "$URL" setup) "$BIN/steward" setup >/dev/null
fi
# A central participant's login (at the hub under LEAVES=1).
login() { echo "$(login_at "$URL" "$1")${hub_domain:+ STEWARD_NATS_DOMAIN=$hub_domain}"; }

# The containers: each on v1 of an image of its own in the test registry, opted in with policy
# `notify` (the notifier mails news; nothing updates them), in a scope of the bench's own.
scope=$id
build() { # build IMAGE ROUND: the test app with a label, pushed; a new digest per round.
  printf 'FROM steward-test/app:v1\nLABEL steward.bench.round=%s\n' "$2" |
    DOCKER_BUILDKIT=0 docker build -q -t "$1" - >/dev/null 2>&1
  docker push -q "$1" >/dev/null
}
for c in $(seq "$CONTAINERS"); do
  image="$STEWARD_TEST_REGISTRY/steward-test/$id-$c:1.0"
  images+=("$image")
  build "$image" 0
  name="$id-$c"
  docker run -d --name "$name" --label steward.enable=true --label "steward.scope=$scope" \
    --label steward.update.policy=notify "$image" >/dev/null
  containers+=("$name")
done

# The probe, bounded: it stops by itself after 15 minutes.
log=$tmp/probe.log
: >"$log"
$PROBE watch "$URL" "$log" 900 >"$tmp/probe.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$tmp/probe.out" 2>/dev/null && break; sleep 0.1; done
# What host sim-01's server sees: the hub's probe under one server, a probe of its own on its
# leaf under LEAVES=1.
host_log=$log
if [ "$LEAVES" = 1 ]; then
  host_log=$tmp/probe-sim-01.log
  : >"$host_log"
  $PROBE watch "${leaf_url[sim-01]}" "$host_log" 900 >"$tmp/probe-sim-01.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q ready "$tmp/probe-sim-01.out" 2>/dev/null && break; sleep 0.1; done
fi
mark() { wc -l <"${1:-$log}"; }
# The stream and buckets of host sim-01's server (the hub's under one server).
state() { $PROBE state "${leaf_url[sim-01]}"; }
# Waits until LOG ($1) shows $2 more messages of KIND ($6: pub, dlv:notifier) matching $3 since
# line $4 (at most $5 s), then 2 s more for what follows them (KV writes, acks, the notifier's
# queueing).
await_seen() {
  local end=$(( $(date +%s) + $5 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    [ "$(tail -n +"$(( $4 + 1 ))" "$1" | grep -cE " $3 .* $6$" || true)" -ge "$2" ] && break
    sleep 0.2
  done
  sleep 2
}

# The centre: one notifier, mail through the test bed's SMTP server to a recipient of its own.
to="$id@steward.test"
centre_t0=$(now)
nats_cpu0=$(cpu_s "$nats_pid")
env $(login notifier) STEWARD_HTTP_ADDR="127.0.0.1:$(port)" STEWARD_SMTP_URL="smtp://$STEWARD_TEST_SMTP" \
  STEWARD_MAIL_FROM="Steward <steward@steward.test>" STEWARD_MAIL_TO="$to" \
  "$BIN/steward-notifier" >"$tmp/notifier.log" 2>&1 &
notifier_pid=$!
pids+=("$notifier_pid")

# The agents: a watcher per simulated host, each its own NATS user, all on the one engine.
# Under LEAVES=1 each on its host's leaf.
for i in $(seq -f %02g 1 "$AGENTS"); do
  env $(login_at "${leaf_url[sim-$i]}" "watcher-sim-$i") ${hub_domain:+STEWARD_NATS_DOMAIN=sim-$i} \
    STEWARD_HOST="sim-$i" STEWARD_SCOPE="$scope" \
    STEWARD_HTTP_ADDR="127.0.0.1:$(port)" "$BIN/steward-watcher" >"$tmp/watcher-$i.log" 2>&1 &
  pids+=($!)
  watcher_pids+=($!)
done
ready=0
for _ in $(seq 600); do
  ready=$( (grep -l '"consuming"' "$tmp"/watcher-*.log "$tmp/notifier.log" 2>/dev/null || true) | wc -l)
  [ "$ready" -ge $((AGENTS + 1)) ] && break
  sleep 0.1
done
[ "$ready" -ge $((AGENTS + 1)) ] || { echo "only $ready of $((AGENTS + 1)) services consuming" >&2; tail -5 "$tmp"/*.log >&2; exit 1; }
startup_s=$(echo "$(now) - $centre_t0" | bc)
sleep 3
nats_cpu_start=$(cpu_s "$nats_pid")
idle_from=$(mark)
sleep 10
idle_to=$(mark)

topology="one nats-server"
[ "$LEAVES" = 1 ] && topology="a hub and $AGENTS leaf nats-servers, one per host"
echo "== scale (SIMULATION: $AGENTS watcher agents on one engine, $CONTAINERS containers each, one notifier; $topology; $PROFILE build)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), nats-server $("${nats_bin:-nats-server}" --version | awk '{print $2}'); $(date -u +%FT%TZ)"
echo "startup of $AGENTS watchers + notifier: all consuming after ${startup_s}s; nats-server CPU $(echo "$nats_cpu_start - $nats_cpu0" | bc) s"
echo "-- idle bus, 10 s, $AGENTS watchers + notifier (pull requests, heartbeats), at the centre's server:"
$PROBE summary "$log" "$idle_from" "$idle_to"

# (1) One agent's check with news for every container (a new digest pushed for each), then one
# without.
for image in "${images[@]}"; do build "$image" 1; done
# Both servers' views under LEAVES=1: sim-01's leaf (the agent's side) and the hub.
views() { # views FROM_HOST TO_HOST FROM_HUB TO_HUB
  if [ "$LEAVES" = 1 ]; then
    echo "   at sim-01's leaf:"; $PROBE summary "$host_log" "$1" "$2"
    echo "   at the hub:"; $PROBE summary "$log" "$3" "$4"
  else
    $PROBE summary "$log" "$3" "$4"
  fi
}
s0=$(state)
from_h=$(mark "$host_log"); from=$(mark)
env $(login cli) STEWARD_HOST=sim-01 "$BIN/steward" check >/dev/null
await_seen "$host_log" "$CONTAINERS" 'host\.sim-01\.image\.updated' "$from_h" 60 pub
[ "$LEAVES" = 1 ] && await_seen "$log" "$CONTAINERS" 'host\.sim-01\.image\.updated' "$from" 60 dlv:notifier
to_h=$(mark "$host_log"); to_=$(mark)
s1=$(state)
echo "-- one check by one agent (sim-01), $CONTAINERS containers, each with a newer digest (includes the CLI's request and the notifier's queueing):"
views "$from_h" "$to_h" "$from" "$to_"
from_h=$(mark "$host_log"); from=$(mark)
env $(login cli) STEWARD_HOST=sim-01 "$BIN/steward" check >/dev/null
await_seen "$host_log" 1 'host\.sim-01\.watch\.requested' "$from_h" 30 pub
to_h=$(mark "$host_log"); to_=$(mark)
s2=$(state)
echo "-- the same check again, nothing new:"
views "$from_h" "$to_h" "$from" "$to_"
echo "-- sim-01's stream and buckets: before, after the check with news, after the one without:"
echo "$s0"; echo "$s1"; echo "$s2"

# (2) Rounds: a new digest for every container, `steward check` to every host.
mail_wait=${MAIL_WAIT:-40}
cpu_n0=$(cpu_s "$nats_pid"); cpu_c0=$(cpu_s "$notifier_pid"); t0=$(now)
from=$(mark)
for r in $(seq 2 $((ROUNDS + 1))); do
  for image in "${images[@]}"; do build "$image" "$r"; done
  round_from=$(mark)
  env $(login cli) "$BIN/steward" check >/dev/null
  # Under LEAVES=1 the hub sees a host's event when its source copies it, then the notifier's
  # delivery: wait for the latter.
  await_seen "$log" $((AGENTS * CONTAINERS)) 'host\.[^.]+\.image\.updated' "$round_from" 120 \
    "$([ "$LEAVES" = 1 ] && echo dlv:notifier || echo pub)"
done
to_=$(mark)
cpu_n1=$(cpu_s "$nats_pid"); cpu_c1=$(cpu_s "$notifier_pid"); t1=$(now)
wall=$(echo "$t1 - $t0" | bc)
echo "-- $ROUNDS rounds of: a new digest for $CONTAINERS images, \`steward check\` to all $AGENTS hosts (${wall}s):"
$PROBE summary "$log" "$from" "$to_"
lat() { $PROBE latency "$log" "$from" "$to_" "$1" "$2"; }
echo "latency (ms from the event's time to the probe's receipt):"
if [ "$LEAVES" = 1 ]; then
  echo "  image.updated, copied to the hub:       $(lat '^host\.[^.]+\.image\.updated$' 'dlv:(?!notifier)')"
else
  echo "  image.updated, publish seen:            $(lat '^host\.[^.]+\.image\.updated$' pub)"
fi
echo "  image.updated, delivered to notifier:   $(lat '^host\.[^.]+\.image\.updated$' dlv:notifier)"
echo "  watch.requested, publish seen:          $(lat '^host\.[^.]+\.watch\.requested$' pub)"
[ "$LEAVES" = 1 ] || echo "  watch.requested, delivered to watchers: $(lat '^host\.[^.]+\.watch\.requested$' dlv:watcher)"
echo "centre during the rounds: nats-server $(echo "$cpu_n1 - $cpu_n0" | bc) CPU s, notifier $(echo "$cpu_c1 - $cpu_c0" | bc) CPU s in ${wall}s"
# Mail: the notifier groups a burst (STEWARD_NOTIFY_GROUP_WINDOW, 15 s); wait for the last.
sleep_until=$(( $(date +%s) + mail_wait ))
while [ "$(date +%s)" -lt "$sleep_until" ]; do sleep 2; done
mails=$( (grep -l "$to" "$STEWARD_TEST_MAILDIR"/new/* 2>/dev/null || true) | wc -l)
echo "mail: $mails messages to $to for $ROUNDS rounds ($((ROUNDS * AGENTS * CONTAINERS)) image.updated); subjects:"
for f in $(grep -l "$to" "$STEWARD_TEST_MAILDIR"/new/* 2>/dev/null || true); do
  grep -m1 '^Subject:' "$f" | cut -c1-120
  printf '  bytes: %s\n' "$(wc -c <"$f")"
done
echo "centre peak memory: nats-server VmHWM $(hwm_kib "$nats_pid") KiB (now $(rss_kib "$nats_pid")), notifier VmHWM $(hwm_kib "$notifier_pid") KiB (now $(rss_kib "$notifier_pid"))"
echo "centre CPU since start: nats-server $(cpu_s "$nats_pid") s, notifier $(cpu_s "$notifier_pid") s"
agents_rss=0
for p in "${watcher_pids[@]}"; do agents_rss=$((agents_rss + $(rss_kib "$p" 2>/dev/null || echo 0))); done
echo "agents: $AGENTS watchers, RSS sum $agents_rss KiB"
if [ "$LEAVES" = 1 ]; then
  leaves_rss=0 leaves_hwm=0 leaves_cpu=0
  for p in "${leaf_pids[@]}"; do
    leaves_rss=$((leaves_rss + $(rss_kib "$p" 2>/dev/null || echo 0)))
    leaves_hwm=$((leaves_hwm + $(hwm_kib "$p" 2>/dev/null || echo 0)))
    leaves_cpu=$(echo "$leaves_cpu + $(cpu_s "$p" 2>/dev/null || echo 0)" | bc)
  done
  echo "leaves: $AGENTS nats-servers, RSS sum $leaves_rss KiB (VmHWM sum $leaves_hwm KiB), CPU since start $leaves_cpu s"
  echo "-- sim-01's leaf, final stream and buckets:"
  state
fi
echo "-- the centre's server, final stream and buckets:"
$PROBE state "$URL"
violations=$(cat "$tmp/nats.log" "$tmp"/leaf-*.log 2>/dev/null | grep -c Violation || true)
echo "permissions violations logged by nats-server: $violations"
# Derived: the flows no agent ran here, from the catalog's sample sizes plus the per-message
# overhead measured above (the no-news check stored one watch.requested).
cargo run -q -p steward-events --example sizes >"$tmp/sizes"
python3 - "$tmp/sizes" "$s0" "$s1" "$s2" "$CONTAINERS" <<'PY'
import json, sys
size = dict((l.split()[0], int(l.split()[1])) for l in open(sys.argv[1]))
s0, s1, s2 = (json.loads(a)["streams"]["STEWARD"]["bytes"] for a in sys.argv[2:5])
containers = int(sys.argv[5])
request = s2 - s1
news = (s1 - s0 - request) / containers
over = request - size["watch.requested"]
print("-- stream bytes: measured watch.requested %d B, image.updated %.0f B stored; overhead %d B per message (over the sample's %d B)" % (request, news, over, size["watch.requested"]))
b = lambda *types: sum(size[t] + over for t in types)
daily = b("backup.started", "backup.done", "backup.verified", "backup.pruned")
weekly = b("backup.verified", "certs.checked")
auto = news + b("backup.requested", "backup.started", "backup.done", "backup.verified", "update.started", "update.succeeded")
manual = auto + b("update.pending", "update.approved")
print("DERIVED (default schedules, sample sizes + overhead):")
print("  per host per day, nothing new: %d B (daily backup %d B, weekly verify and certs %d B / 7)" % (daily + weekly / 7, daily, weekly))
print("  per container and new digest: notify %.0f B, automatic %.0f B, manual %.0f B; per mail (notify.sent) %d B" % (news, auto, manual, b("notify.sent")))
for hosts, per_host in ((1, 10), (50, 10)):
    day = hosts * (daily + weekly / 7) + hosts * per_host / 7 * auto
    print("  %d host(s) x %d containers, one new image per container a week, automatic: %.0f KB/day, %.0f MB/year" % (hosts, per_host, day / 1000, day * 365 / 1e6))
PY
