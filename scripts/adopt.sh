#!/usr/bin/env bash
# Moves a running Gitea stack (Gitea, PostgreSQL, nginx with its certificates in a host
# directory, Diun labels) under Steward's compose stack, with its data and certificates.
# docs/migration.md, "Cutover", is this script's prose: each "step N" below is the step of the
# same number there. Rehearsed by tests/tests/compose_stack.rs (downtime in docs/benchmarks.md).
#
#   scripts/adopt.sh OLD_PROJECT STEWARD_DIR
#
# OLD_PROJECT  the running stack's compose project (its containers' label
#              com.docker.compose.project; v1 names them OLD_PROJECT_server_1).
# STEWARD_DIR  this release's compose/ directory, prepared as runbooks.md says (install steps
#              2-3: ./init-secrets.sh, .env with GITEA_DOMAIN, the bucket, the mail), not yet
#              started.
# Environment: OLD_GITEA, OLD_DB, OLD_NGINX (the old services' names; default server, db,
# nginx), LETSENCRYPT (the host's certificate directory, default /etc/letsencrypt),
# COMPOSE_PROJECT_NAME (the new project, default gitea: it names the new volumes and
# containers), COMPOSE_FILE (as docker-compose reads it), WAIT (seconds, default 300),
# COMPOSE (default docker-compose, else `docker compose` when only v2 is installed).
#
# Nothing of the old stack is removed: its containers are stopped, its data directories and
# volumes are copied, not moved. To go back: `docker-compose down` in STEWARD_DIR, then
# `docker start` the old containers.
set -euo pipefail
# shellcheck source=throwaway.sh
source "$(dirname "${BASH_SOURCE[0]}")/throwaway.sh"
OLD_PROJECT=${1:?usage: adopt.sh OLD_PROJECT STEWARD_DIR}
DIR=${2:?usage: adopt.sh OLD_PROJECT STEWARD_DIR}
OLD_GITEA=${OLD_GITEA:-server}
OLD_DB=${OLD_DB:-db}
OLD_NGINX=${OLD_NGINX:-nginx}
LETSENCRYPT=${LETSENCRYPT:-/etc/letsencrypt}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-gitea}
WAIT=${WAIT:-300}
NEW=$COMPOSE_PROJECT_NAME
if [ -z "${COMPOSE:-}" ]; then
  if command -v docker-compose >/dev/null; then COMPOSE=docker-compose; else COMPOSE="docker compose"; fi
fi
cd "$DIR"

say() { printf '[adopt] %s\n' "$*"; }
die() { printf '[adopt] error: %s\n' "$*" >&2; exit 1; }

# container SERVICE: the one container of the old project's SERVICE.
container() {
  local found
  found=$(docker ps -a --filter "label=com.docker.compose.project=$OLD_PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}')
  [ -n "$found" ] || die "no container of service $1 in project $OLD_PROJECT"
  [ "$(wc -l <<<"$found")" -eq 1 ] || die "service $1 of $OLD_PROJECT has several containers: $found"
  echo "$found"
}
# mount_source CONTAINER PATH: the volume name or host directory mounted at PATH.
mount_source() {
  docker inspect -f "{{range .Mounts}}{{if eq .Destination \"$2\"}}{{if eq .Type \"volume\"}}{{.Name}}{{else}}{{.Source}}{{end}}{{end}}{{end}}" "$1"
}
# env_of CONTAINER NAME: the value of NAME in the container's environment (empty if unset).
env_of() {
  docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$1" | sed -n "s/^$2=//p"
}
# set_env NAME VALUE: NAME=VALUE in .env, replacing an existing line.
set_env() {
  if grep -q "^$1=" .env; then sed -i "s|^$1=.*|$1=$2|" .env; else echo "$1=$2" >>.env; fi
}
healthy() { # SERVICE
  local id
  id=$($COMPOSE ps -q "$1")
  [ -n "$id" ] && [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")" = healthy ]
}

say "step 1: read the old stack (nothing is stopped yet)"
[ -f .env ] && [ -d secrets ] || die "$DIR has no .env or secrets/: prepare it first (runbooks.md, install steps 2-3)"
gitea=$(container "$OLD_GITEA")
db=$(container "$OLD_DB")
nginx=$(container "$OLD_NGINX")
if docker ps --format '{{.Image}}' | grep -qi watchtower; then
  die "Watchtower is running: remove it first (two updaters would race for the same containers)"
fi
user=$(env_of "$db" POSTGRES_USER)
name=$(env_of "$db" POSTGRES_DB)
[ "${user:-postgres}" = gitea ] && [ "${name:-$user}" = gitea ] \
  || die "$db has POSTGRES_USER=${user:-postgres} POSTGRES_DB=${name:-$user}; Steward's compose file expects gitea/gitea"
password=$(env_of "$db" POSTGRES_PASSWORD)
[ -n "$password" ] || die "$db has no POSTGRES_PASSWORD in its environment: put the database's password into secrets/postgres_password by hand and set it there"
gitea_data=$(mount_source "$gitea" /data)
db_data=$(mount_source "$db" /var/lib/postgresql/data)
[ -n "$gitea_data" ] || die "$gitea mounts nothing at /data"
[ -n "$db_data" ] || die "$db mounts nothing at /var/lib/postgresql/data"
[ -d "$LETSENCRYPT/live" ] || die "$LETSENCRYPT/live does not exist: set LETSENCRYPT to the certificate directory nginx reads"
gitea_image=$(docker inspect -f '{{.Config.Image}}' "$gitea")
postgres_image=$(docker inspect -f '{{.Config.Image}}' "$db")
# An empty one is fine (docker-compose makes them all on any `up`); one with data is never
# copied over: a second run, or a stack started by mistake before the data was moved.
for volume in postgres gitea certs; do
  if docker volume inspect "${NEW}_$volume" >/dev/null 2>&1 \
    && ! throwaway --entrypoint sh -v "${NEW}_$volume:/v:ro" "$postgres_image" -c '[ -z "$(ls -A /v)" ]'; then
    die "volume ${NEW}_$volume exists and is not empty: nothing is copied over it (another COMPOSE_PROJECT_NAME, or remove it if it is not needed)"
  fi
done
say "  $gitea ($gitea_image) data: $gitea_data"
say "  $db ($postgres_image) data: $db_data"
say "  $nginx certificates: $LETSENCRYPT"
for c in $(docker ps -a --filter "label=com.docker.compose.project=$OLD_PROJECT" --format '{{.Names}}'); do
  labels=$(docker inspect -f '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}} {{end}}' "$c" \
    | tr ' ' '\n' | grep -E '^(diun\.|com\.centurylinklabs\.watchtower\.)' | tr '\n' ' ' || true)
  [ -z "$labels" ] || say "  labels to review on $c: $labels"
done

say "step 2: the same images and the database's password in .env and secrets/"
# The running majors: a newer PostgreSQL major cannot read the old data directory, and a Gitea
# downgrade is refused by its own migrations.
set_env GITEA_IMAGE "$gitea_image"
set_env POSTGRES_IMAGE "$postgres_image"
printf '%s\n' "$password" >secrets/postgres_password
chmod 0444 secrets/postgres_password
$COMPOSE config -q

say "step 3: stop the old Gitea, nginx and PostgreSQL (downtime starts)"
stopped_at=$(date +%s.%N)
docker stop -t 30 "$gitea" "$nginx" "$db" >/dev/null

say "step 4: copy the data and certificates into the new project's volumes"
# Created with compose's labels, so docker-compose takes them as its own; cp -a keeps owners,
# modes and certbot's live/ -> archive/ links.
for pair in "postgres:$db_data" "gitea:$gitea_data" "certs:$LETSENCRYPT"; do
  volume=${NEW}_${pair%%:*} source=${pair#*:}
  docker volume inspect "$volume" >/dev/null 2>&1 \
    || docker volume create --label "com.docker.compose.project=$NEW" \
      --label "com.docker.compose.volume=${pair%%:*}" "$volume" >/dev/null
  throwaway --entrypoint sh -v "$source:/from:ro" -v "$volume:/to" "$postgres_image" \
    -c 'cp -a /from/. /to/'
  say "  $source -> $volume"
done

say "step 5: start the Steward stack"
$COMPOSE up -d
deadline=$(($(date +%s) + WAIT))
until healthy gitea && healthy nginx; do
  [ "$(date +%s)" -lt "$deadline" ] || die "gitea or nginx not healthy within ${WAIT}s (docker-compose ps; docker-compose logs gitea nginx); to go back: docker-compose down, docker start $db $gitea $nginx"
  sleep 0.5
done
say "downtime: $(awk -v a="$stopped_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (the old Gitea stopped until the new one is healthy behind nginx)"

say "step 6: a first check and a first backup"
$COMPOSE run --rm -T steward check
$COMPOSE run --rm -T steward backup now
$COMPOSE run --rm -T steward status

say "done. The old containers are stopped, not removed ($gitea $nginx $db); their data is where it was."
say "Once Gitea is checked and a restore rehearsed (runbooks.md), remove them: docker rm $gitea $nginx $db"
