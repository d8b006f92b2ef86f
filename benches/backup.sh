#!/usr/bin/env bash
# Backup benchmark (issue #4), Steward and the seeds' pipeline in the same run, same S3 server:
#   data:  DATA_MIB of mixed files in a volume (half random, half text) + a PostgreSQL database
#          whose dump is about DB_MB
#   peer:  docker exec db pg_dump | gzip | aws s3 cp -   and   docker exec app tar czf - /data | aws s3 cp -
#   limit: the tools' own limit: the custom-format dump and the path's tar each piped through
#          zstd -T0 -3 into aws s3 cp -, both at once (independent components need not wait)
#   Steward: the release steward-backup service with signed manifests and a second copy (another
#          bucket on the same server; COPY=0 leaves it out), `steward backup now` (wall time to
#          backup.done), then the time until the copy is complete, its peak RSS (VmHWM), then
#          `steward restore latest --yes` (RTO: checks, safety backup, staged load and swap).
#   benches/backup.sh                   1 GiB of data + ~200 MB dump
#   DATA_MIB=4096 benches/backup.sh     the memory check at 4 GiB
#   AGE=1 benches/backup.sh             Steward with client-side age encryption (needs age-keygen)
#   ARENAS=default benches/backup.sh    glibc's default malloc arenas instead of the image's 2
#   PEER=0 benches/backup.sh            without the seeds' pipeline (quicker, for profiling)
#   BACKUP_BIN=path benches/backup.sh   another steward-backup build (an A/B of a change)
#   MMAP=262144 benches/backup.sh       another glibc mmap threshold than the image's 1 MiB
# Results go to stdout; docs/benchmarks.md records a run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DATA_MIB=${DATA_MIB:-1024}
DB_ROWS=${DB_ROWS:-1600000}
# The shared NATS and S3 (the script reads S3's directory and starts the services itself).
"$ROOT/infra/testbed/up.sh" --servers >/dev/null
STATE=${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}
# shellcheck disable=SC1091
source "$STATE/env"
command -v aws >/dev/null 2>&1 || pip install -q awscli >/dev/null 2>&1
cargo build -q --release --bins
BIN="$ROOT/target/release"
RUN=bench$(date +%s)
BUCKET=steward-$RUN
export AWS_ACCESS_KEY_ID=$STEWARD_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$STEWARD_TEST_S3_SECRET_KEY AWS_REGION=us-east-1
export STEWARD_NATS_URL=$STEWARD_TEST_NATS_URL STEWARD_STREAM=BENCH_$RUN STEWARD_SUBJECT_PREFIX=$RUN.
export STEWARD_S3_BUCKET=$BUCKET STEWARD_S3_ENDPOINT=$STEWARD_TEST_S3_ENDPOINT STEWARD_SCOPE=$RUN
S3="aws --endpoint-url $STEWARD_TEST_S3_ENDPOINT s3"
mkdir -p "$STATE/s3/$BUCKET"
DB=$RUN-db APP=$RUN-app
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  docker rm -f -v "$DB" "$APP" >/dev/null 2>&1 || true
  [ -n "${stamp:-}" ] && kill "$stamp" 2>/dev/null
  # The run's stream and KV buckets (created by `steward setup` below) go with it.
  python3 - "$STEWARD_TEST_NATS_URL" "$STEWARD_STREAM" <<'PY' 2>/dev/null || true
import asyncio, sys, nats
async def main(url, stream):
    nc = await nats.connect(url)
    js = nc.jetstream()
    for info in await js.streams_info():
        name = info.config.name
        if name == stream or name.startswith(f"KV_{stream}_"):
            await js.delete_stream(name)
    await nc.close()
asyncio.run(main(*sys.argv[1:]))
PY
  rm -rf "${STATE:?}/s3/$BUCKET" "${STATE:?}/s3/$BUCKET-copy" "$STATE/$RUN.time" "$STATE/$RUN.age" "$STATE/$RUN.key" "$STATE/logs/$RUN.stamped"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.1f'; }
# CPU seconds (user + system, with reaped children) of the named processes, read from /proc:
# where a phase's work went, which the wall time alone does not say on a shared machine.
TICK=$(getconf CLK_TCK)
cpu() {
  local total=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13 + $14 + $15}')))
  done
  echo "$total"
}
engine_cpu() { cpu $(pgrep -x dockerd) $(pgrep -x containerd) $(pgrep -f containerd-shim); }
s3_cpu() { cpu $(pgrep -x s3s-fs); }
cpus() { echo "$2 - $1" | bc -l | xargs -I{} echo "{} / $TICK" | bc -l | xargs printf '%.1f'; }
# CPU time the hypervisor gave to other guests (all cores: /proc/stat's steal column): on a
# shared VM a phase with seconds of it measured the neighbours too, and should be re-run.
stolen() { awk '/^cpu / {print $9}' /proc/stat; }

echo "== machine: $(nproc) cores; data ${DATA_MIB} MiB; ${DB_ROWS} rows"
docker run -d --name "$DB" --label "steward.scope=$RUN" --label steward.backup.postgres=true \
  -e POSTGRES_USER=gitea -e POSTGRES_PASSWORD=bench -e POSTGRES_DB=gitea "$STEWARD_TEST_POSTGRES_IMAGE" >/dev/null
docker run -d --name "$APP" --label "steward.scope=$RUN" --label steward.backup.paths=/data -v /data \
  "$STEWARD_TEST_APP_IMAGE:v1" >/dev/null
for _ in $(seq 120); do docker exec "$DB" pg_isready -qh 127.0.0.1 && break; sleep 0.5; done
docker exec "$DB" psql -qU gitea -c "CREATE TABLE issues AS SELECT g AS id, md5(g::text) AS title,
  repeat(md5((g*7)::text), 2) AS body, now() - (g || ' minutes')::interval AS created FROM generate_series(1, $DB_ROWS) g"
half=$((DATA_MIB / 2))
docker exec "$APP" sh -c "mkdir -p /data/lfs /data/repos && \
  dd if=/dev/urandom of=/data/lfs/blob bs=1M count=$half 2>/dev/null && \
  i=0; while [ \$i -lt $((half * 4)) ]; do \
    head -c 262144 /data/lfs/blob | od -An -tx1 | head -c 262144 > /data/repos/f\$i.txt; i=\$((i+1)); done"
dump_mb=$(docker exec "$DB" sh -c 'pg_dump -Fc -Z0 -U gitea gitea | wc -c' | awk '{printf "%.0f", $1/1e6}')
echo "   dump (custom format, uncompressed): ${dump_mb} MB; data: $(docker exec "$APP" du -sm /data | cut -f1) MiB"

if [ "${PEER:-1}" = 1 ]; then
  echo "== peer: pg_dump | gzip | aws s3 cp -  and  tar czf - | aws s3 cp -"
  st0=$(stolen)
  t0=$(now)
  docker exec "$DB" pg_dump -U gitea gitea | gzip | $S3 cp - "s3://$BUCKET/peer/db.sql.gz" >/dev/null
  t1=$(now)
  docker exec "$APP" tar czf - /data 2>/dev/null | $S3 cp - "s3://$BUCKET/peer/data.tar.gz" >/dev/null
  t2=$(now)
  peer_db=$(secs "$t0" "$t1"); peer_data=$(secs "$t1" "$t2"); peer_total=$(secs "$t0" "$t2")
  echo "   database ${peer_db} s, data ${peer_data} s, total ${peer_total} s; CPU s stolen by the hypervisor $(cpus "$st0" "$(stolen)")"
else
  # PEER=0 (while profiling Steward against the limit): the seeds' pipeline is left out.
  peer_total=0
fi

echo "== the tools' limit: pg_dump -Fc -Z0 | zstd -T0 -3 | aws s3 cp -  and  tar cf - | zstd -T0 -3 | aws s3 cp -, at once"
command -v zstd >/dev/null 2>&1 || apt-get install -y -qq zstd >/dev/null
e0=$(engine_cpu); s0=$(s3_cpu); st0=$(stolen)
t0=$(now)
# Under time(1), whose account includes the pipelines' own processes (docker CLI, zstd, aws).
/usr/bin/time -f '%U %S' -o "$STATE/$RUN.time" bash -c "
docker exec $DB pg_dump -Fc -Z0 -U gitea gitea | zstd -q -T0 -3 | $S3 cp - s3://$BUCKET/limit/db.dump.zst >/dev/null &
docker exec $APP tar cf - /data 2>/dev/null | zstd -q -T0 -3 | $S3 cp - s3://$BUCKET/limit/data.tar.zst >/dev/null &
wait"
t1=$(now)
e1=$(engine_cpu); s1=$(s3_cpu); st1=$(stolen)
limit_total=$(secs "$t0" "$t1")
echo "   total ${limit_total} s"
echo "   CPU s: docker CLI + zstd + aws $(awk '{printf "%.1f", $1 + $2}' "$STATE/$RUN.time"), engine $(cpus "$e0" "$e1"), S3 server $(cpus "$s0" "$s1"), stolen by the hypervisor $(cpus "$st0" "$st1")"

if [ "${AGE:-0}" = 1 ]; then
  command -v age-keygen >/dev/null 2>&1 || apt-get install -y -qq age >/dev/null
  age-keygen -o "$STATE/$RUN.age" 2>/dev/null
  export STEWARD_BACKUP_AGE_IDENTITY_FILE=$STATE/$RUN.age
  STEWARD_BACKUP_AGE_RECIPIENTS=$(age-keygen -y "$STATE/$RUN.age")
  export STEWARD_BACKUP_AGE_RECIPIENTS
fi
"$BIN/steward" setup >/dev/null
# Every manifest is signed (required since issue 25).
openssl genpkey -algorithm ed25519 -out "$STATE/$RUN.key" 2>/dev/null
export STEWARD_BACKUP_SIGNING_KEY_FILE=$STATE/$RUN.key
if [ "${COPY:-1}" = 1 ]; then
  mkdir -p "$STATE/s3/$BUCKET-copy"
  export STEWARD_BACKUP_COPY_BUCKET=$BUCKET-copy STEWARD_BACKUP_COPY_ENDPOINT=$STEWARD_TEST_S3_ENDPOINT
fi
echo "== Steward: steward-backup (release) + steward backup now (signed${AGE:+, age}$([ "${COPY:-1}" = 1 ] && echo ', second copy'))"
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# As the image runs it (Dockerfile: MALLOC_ARENA_MAX=2, MALLOC_MMAP_THRESHOLD_=262144);
# ARENAS=default measures glibc's own malloc settings; MMAP=BYTES another mmap threshold.
arenas=()
[ "${ARENAS:-2}" = default ] || arenas=(MALLOC_ARENA_MAX="${ARENAS:-2}" MALLOC_MMAP_THRESHOLD_="${MMAP:-262144}")
env "${arenas[@]}" STEWARD_HTTP_ADDR=127.0.0.1:$http "${BACKUP_BIN:-$BIN/steward-backup}" >"$STATE/logs/$RUN.log" 2>&1 &
pid=$!
# Each log line with the time it was written, for the phases of the backup and the restore.
(tail -n +1 -F --pid=$$ "$STATE/logs/$RUN.log" 2>/dev/null | while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done) >"$STATE/logs/$RUN.stamped" &
stamp=$!
for _ in $(seq 100); do grep -q consuming "$STATE/logs/$RUN.log" && break; sleep 0.1; done
# Resident memory every 0.1 s (time, KiB), for the peak of each phase below (VmHWM gives only
# the whole run's).
(while kill -0 "$pid" 2>/dev/null; do
  printf '%s %s\n' "$(date +%s.%N)" "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
  sleep 0.1
done) >"$STATE/logs/$RUN.rss" &
peak() { awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b && $2 > m {m = $2} END {printf "%.1f", m / 1024}' "$STATE/logs/$RUN.rss"; }
at() { awk -v m="$1" 'index($0, m) {print $1; exit}' "$STATE/logs/$RUN.stamped"; }
e0=$(engine_cpu); s0=$(s3_cpu); b0=$(cpu "$pid"); st0=$(stolen)
t0=$(now)
"$BIN/steward" backup now
t1=$(now)
e1=$(engine_cpu); s1=$(s3_cpu); b1=$(cpu "$pid"); st1=$(stolen)
steward_total=$(secs "$t0" "$t1")
echo "   CPU s to backup.done: steward-backup $(cpus "$b0" "$b1"), engine $(cpus "$e0" "$e1"), S3 server $(cpus "$s0" "$s1"), stolen by the hypervisor $(cpus "$st0" "$st1")"
copied=
if [ "${COPY:-1}" = 1 ]; then
  for _ in $(seq 1200); do copied=$(at "copied to the second copy"); [ -n "$copied" ] && break; sleep 0.25; done
fi
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
echo "   total ${steward_total} s to backup.done${copied:+; second copy complete after $(secs "$t0" "$copied") s}; peak RSS of steward-backup $(echo "$hwm / 1024" | bc -l | xargs printf '%.1f') MiB"
echo "   sampled peak RSS: backup $(peak "$t0" "$t1") MiB${copied:+, copy after it $(peak "$t1" "$copied") MiB}"
# Flat or growing: the peak of each quarter of the backup (a plateau reached early is flat;
# a peak that keeps rising with the data is not).
quarters=$(for q in 0 1 2 3; do
  peak "$(echo "$t0 + ($t1 - $t0) * $q / 4" | bc -l)" "$(echo "$t0 + ($t1 - $t0) * ($q + 1) / 4" | bc -l)"
  printf ' '
done)
echo "   sampled peak RSS by quarter of the backup: $quarters(MiB; trace kept in $STATE/logs/$RUN.rss)"
speedup="not measured (PEER=0)"
[ "$peer_total" = 0 ] || speedup="$(echo "$peer_total / $steward_total" | bc -l | xargs printf '%.1f')x"
echo "   speed-up over the peer: $speedup; against the tools' limit: $(echo "$steward_total / $limit_total" | bc -l | xargs printf '%.2f')x its time"
echo "   stored: steward $($S3 ls --recursive "s3://$BUCKET/" | grep -v ' peer/' | grep -v ' limit/' | awk '{s+=$3} END {printf "%.0f", s/1048576}') MiB," \
  "peer $($S3 ls --recursive "s3://$BUCKET/peer/" | awk '{s+=$3} END {printf "%.0f", s/1048576}') MiB," \
  "limit $($S3 ls --recursive "s3://$BUCKET/limit/" | awk '{s+=$3} END {printf "%.0f", s/1048576}') MiB"

echo "== restore (RTO): steward restore latest --yes"
st0=$(stolen)
t0=$(now)
"$BIN/steward" restore latest --yes
t1=$(now)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
echo "   restore $(secs "$t0" "$t1") s (CPU s stolen by the hypervisor $(cpus "$st0" "$(stolen)")); peak RSS after restore $(echo "$hwm / 1024" | bc -l | xargs printf '%.1f') MiB"
checks=$(at "checking checksums before touching anything"); safety=$(at "taking the safety backup")
safe=$(at "safety backup complete"); stopping=$(at "stopping for the restore")
loaded=$(awk 'index($0, "loaded beside the live data") {t=$1} END {print t}' "$STATE/logs/$RUN.stamped")
if [ -n "$checks" ] && [ -n "$safety" ] && [ -n "$safe" ] && [ -n "$stopping" ] && [ -n "$loaded" ]; then
  echo "   phases: checksums of every object $(secs "$checks" "$safety") s; safety backup $(secs "$safety" "$safe") s;" \
    "staged load beside the live data $(secs "$stopping" "$loaded") s; swap, restart, health $(secs "$loaded" "$t1") s"
  echo "   sampled peak RSS: checksums $(peak "$checks" "$safety") MiB; safety backup $(peak "$safety" "$safe") MiB;" \
    "staged load $(peak "$stopping" "$loaded") MiB; swap $(peak "$loaded" "$t1") MiB"
fi
