#!/usr/bin/env bash
# The local demo of the whole flow so far:
#   the test bed, all five Steward services on the bus, two stand-in web apps from the local
#   registry (one with policy automatic, one manual); a newer version is pushed, `steward check`
#   finds it, the automatic app is updated (pull, recreate with its exact configuration, health
#   gate), the manual one is mailed for approval and approved through the mail's signed link,
#   backed up first (database and data to the S3 server); then data is lost and `steward
#   restore latest` brings it back; an outage is mailed and its recovery too; then the audit.
#   scripts/demo.sh          run the demo, then stop the services and remove the demo apps
#   scripts/demo.sh --keep   leave everything running (logs in $STATE/demo/)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KEEP=${1:-}
"$ROOT/infra/testbed/up.sh" --servers
STATE=${STEWARD_TESTBED_DIR:-/var/tmp/steward-testbed}
# shellcheck disable=SC1091
source "$STATE/env"
cargo build --workspace --bins --locked
BIN="$ROOT/target/debug"
DEMO="$STATE/demo"
mkdir -p "$DEMO"
# Production names (stream STEWARD); the scope keeps the demo's hands off other containers.
export STEWARD_NATS_URL=$STEWARD_TEST_NATS_URL STEWARD_LOG_FORMAT=pretty NO_COLOR=1 STEWARD_SCOPE=steward-demo
export STEWARD_HEALTH_GRACE=5s STEWARD_WATCH_SCHEDULE="0 3 * * 0"
# Backups go to the test bed's S3 server (a bucket of s3s-fs is a directory of its root).
export STEWARD_S3_BUCKET=steward-demo STEWARD_S3_ENDPOINT=$STEWARD_TEST_S3_ENDPOINT STEWARD_S3_PREFIX=demo
export AWS_ACCESS_KEY_ID=$STEWARD_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$STEWARD_TEST_S3_SECRET_KEY AWS_REGION=us-east-1
mkdir -p "$STATE/s3/steward-demo"
# Mail goes to the test bed's SMTP server (a maildir); the updater (on :9102) signs approval links.
MAIL_TO=ops-$(date +%s)@steward-demo.test
export STEWARD_SMTP_URL=smtp://$STEWARD_TEST_SMTP STEWARD_MAIL_FROM="Steward <steward@steward-demo.test>"
export STEWARD_MAIL_TO=$MAIL_TO STEWARD_NOTIFY_GROUP_WINDOW=2s
export STEWARD_PUBLIC_URL=http://127.0.0.1:9102
STEWARD_APPROVAL_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export STEWARD_APPROVAL_SECRET STEWARD_HEALTH_INTERVAL=2s
# mail SUBJECT-PART [FIELD]: the newest demo mail whose subject contains SUBJECT-PART: its
# subject, or the approval link in its text.
mail() {
  /usr/bin/python3 - "$STEWARD_TEST_MAILDIR" "$MAIL_TO" "$1" "${2:-subject}" <<'PY'
import email, email.policy, pathlib, re, sys
maildir, to, part, field = sys.argv[1:5]
files = sorted(pathlib.Path(maildir, "new").glob("*"), key=lambda p: p.stat().st_mtime)
for f in reversed(files):
    m = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
    if to in str(m["To"]) and part in str(m["Subject"]):
        if field == "subject":
            print(m["Subject"])
        else:
            text = m.get_body(("plain",)).get_content()
            print(re.search(r"https?://\S+/approve/\S+", text).group(0))
        sys.exit(0)
sys.exit(1)
PY
}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
serve() { curl -s --max-time 2 "127.0.0.1:$1/" || echo "(no answer)"; }
wait_for() { # SECONDS CMD... : retry until CMD succeeds
  local n=$(( $1 * 5 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

REG=$STEWARD_TEST_REGISTRY
# Fresh names each run: what Steward remembers about earlier demo containers stays in the
# audit trail, the new ones start clean.
RUN=$(date +%H%M%S)
WEB=steward-demo-web-$RUN APP=steward-demo-app-$RUN DB=steward-demo-db-$RUN
# At most 4 at once: many parallel removals can deadlock dockerd 20.10 (libnetwork).
docker ps -aq --filter label=steward.scope=steward-demo | xargs -r -n 4 docker rm -f >/dev/null
say "two apps from the local registry: $WEB (automatic) on :18081, $APP (manual) on :18082"
for img in web app; do
  docker tag steward-test/app:v1 "$REG/steward-demo/$img:1.0"
  docker push -q "$REG/steward-demo/$img:1.0" >/dev/null
done
common=(--label steward.enable=true --label steward.scope=steward-demo --restart unless-stopped)
docker run -d --name "$DB" --label steward.scope=steward-demo --label steward.backup.postgres=true \
  -e POSTGRES_USER=gitea -e POSTGRES_PASSWORD=demo -e POSTGRES_DB=gitea "$STEWARD_TEST_POSTGRES_IMAGE" >/dev/null
docker run -d --name "$WEB" -p 127.0.0.1:18081:8080 "${common[@]}" --label steward.update.backup=false \
  --label steward.update.policy=automatic "$REG/steward-demo/web:1.0" >/dev/null
docker run -d --name "$APP" -p 127.0.0.1:18082:8080 "${common[@]}" -v /data \
  --label steward.backup.paths=/data --label steward.update.policy=manual "$REG/steward-demo/app:1.0" >/dev/null
wait_for 60 docker exec "$DB" pg_isready -h 127.0.0.1 -U gitea
docker exec "$DB" psql -qU gitea -c "CREATE TABLE repos AS SELECT g AS id, 'repo-' || g AS name FROM generate_series(1, 10000) g"
docker exec "$APP" sh -c 'echo "the repositories" > /data/repos.txt'
echo "  $DB: 10000 rows in table repos; $APP: /data/repos.txt"
wait_for 15 sh -c "curl -s 127.0.0.1:18081/ | grep -q v1 && curl -s 127.0.0.1:18082/ | grep -q v1"
echo "  :18081 -> $(serve 18081)    :18082 -> $(serve 18082)"

say "starting the five services"
pids=()
port=9101
for svc in watcher updater backup health notifier; do
  pkill -f "$BIN/steward-$svc" 2>/dev/null || true
  STEWARD_HTTP_ADDR=127.0.0.1:$port "$BIN/steward-$svc" >"$DEMO/$svc.log" 2>&1 &
  pids+=($!)
  printf '  steward-%-9s pid %-7s http://127.0.0.1:%s/{healthz,readyz,metrics}\n' "$svc" "$!" "$port"
  port=$((port + 1))
done
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  docker rm -f -v "$WEB" "$APP" "$DB" >/dev/null 2>&1 || true
}
[ "$KEEP" = --keep ] || trap cleanup EXIT
for p in 9101 9102 9103 9104 9105; do
  wait_for 20 curl -sf "127.0.0.1:$p/readyz" || { echo "service on :$p not ready"; exit 1; }
done
for svc in watcher updater backup health notifier; do
  wait_for 20 grep -q consuming "$DEMO/$svc.log"
done
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sleep 1

say "a newer version (v2) is pushed under the same tags; steward check"
for img in web app; do
  docker tag steward-test/app:v2 "$REG/steward-demo/$img:1.0"
  docker push -q "$REG/steward-demo/$img:1.0" >/dev/null
done
"$BIN/steward" check
wait_for 60 sh -c "'$BIN/steward' updates --all | grep $WEB | grep -q succeeded" \
  || echo "  (the automatic update did not finish in 60 s; see $DEMO/updater.log)"
"$BIN/steward" check >/dev/null   # let the watcher see the new state for `steward status`
sleep 1
echo "  :18081 ($WEB, automatic) -> $(serve 18081)"
wait_for 20 sh -c "'$BIN/steward' updates | grep -q $APP"
echo "  :18082 ($APP, manual)    -> $(serve 18082)"

say "steward status"
"$BIN/steward" status
say "steward updates"
"$BIN/steward" updates
say "the approval mail, and its link: GET shows the page, only its POST approves"
if wait_for 30 mail "Approve update of $APP"; then
  echo "  mail to $MAIL_TO: $(mail "Approve update of $APP")"
  link=$(mail "Approve update of $APP" link)
  echo "  GET  ${link%/*}/…  -> $(curl -s -o /dev/null -w '%{http_code}' "$link") (the page; nothing decided)"
  echo "  POST decision=approve -> $(curl -s -o /dev/null -w '%{http_code}' -d decision=approve "$link")"
  echo "  POST again            -> $(curl -s -o /dev/null -w '%{http_code}' -d decision=approve "$link") (a link works once)"
else
  id=$("$BIN/steward" updates | awk -v app="$APP" '$2 == app {print $1}' | head -n 1)
  echo "  (no mail within 30 s; see $DEMO/notifier.log) steward approve ${id:24}"
  "$BIN/steward" approve "${id:24}"
fi
# Finished = the health gate passed, not only v2 answering: a restore must not race the gate.
wait_for 90 sh -c "'$BIN/steward' updates --all | grep $APP | grep -q succeeded" \
  || echo "  (the approved update did not finish in 90 s; see $DEMO/updater.log)"
echo "  :18082 ($APP) -> $(serve 18082)"

say "steward backup list (the approval's pre-update backup: database, /data, configuration)"
"$BIN/steward" backup list | grep -E "^ID|pre_update"

say "disaster: rows deleted, a file removed; steward restore latest --yes"
docker exec "$DB" psql -qU gitea -c "DELETE FROM repos WHERE id > 10"
docker exec "$APP" rm /data/repos.txt
echo "  before: $(docker exec "$DB" psql -tAU gitea -c 'SELECT count(*) FROM repos') rows, /data: $(docker exec "$APP" ls /data | wc -l) files"
"$BIN/steward" restore latest --yes
echo "  after:  $(docker exec "$DB" psql -tAU gitea -c 'SELECT count(*) FROM repos') rows, /data/repos.txt: $(docker exec "$APP" cat /data/repos.txt)"

say "steward backup verify latest (checksums, and the dump loaded into a scratch PostgreSQL)"
"$BIN/steward" backup verify latest

say "an outage: $WEB stopped, then started again (health probes every 2 s)"
docker stop -t 1 "$WEB" >/dev/null
wait_for 30 mail "$WEB is unhealthy" && echo "  mail: $(mail "$WEB is unhealthy")"
docker start "$WEB" >/dev/null
wait_for 30 mail "$WEB recovered" && echo "  mail: $(mail "$WEB recovered")"

say "what each service received"
for svc in watcher updater backup health notifier; do
  echo "steward-$svc:"
  grep -E ' received' "$DEMO/$svc.log" | sed -E 's/^.*(subject=[^ ]+).*received.*(container=[^ ]+).*/    \1 \2/' || echo "    (nothing)"
done

say "the audit trail: steward audit --since $since"
"$BIN/steward" audit --since "$since"

if [ "$KEEP" = --keep ]; then
  say "everything keeps running; logs in $DEMO; stop with: pkill -f $BIN/steward- ; docker rm -f $WEB $APP"
else
  say "stopping the services (SIGTERM) and removing the demo apps"
fi
