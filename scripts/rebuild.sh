#!/usr/bin/env bash
# Rebuilds a lost host's stack from the off-host kit and the backup bucket: the steps of
# docs/runbooks.md, "Disaster recovery on an empty host", in that order (the doc is this
# script's prose: change both together). Run it as root on the new host, Docker installed.
#
#   scripts/rebuild.sh KIT IDENTITY DIR [BACKUP]
#
# KIT: the file `steward kit export` wrote; IDENTITY: the age identity file it is encrypted
# to (the one that opens encrypted backups); DIR: where the compose project goes, the
# directory the kit names (compose names the project, its containers and volumes after it);
# BACKUP: the backup to restore (default: latest).
# STEWARD_IMAGE: the Steward image that opens the kit (default steward/steward:0.1.0; the
# stack then runs the one its .env names). COMPOSE: the compose command (default
# `docker compose`; `docker-compose` for v1; with `-p NAME` / `-f FILE` as deployed).
# Re-runnable: a run that was killed (a dropped SSH session, a reboot) is finished by running
# it again with the same arguments. What a run got through is kept beside DIR (not in it:
# the project directory is backed up) in .<name>.rebuild, one finished step a line; that file
# is also what lets a second run find DIR not empty, and it is removed when the rebuild is done.
set -euo pipefail
# shellcheck source=throwaway.sh
source "$(dirname "${BASH_SOURCE[0]}")/throwaway.sh"
log() { printf '[rebuild] %s\n' "$*"; }
if [ $# -lt 3 ]; then sed -n '2,19p' "$0" >&2; exit 2; fi
kit=$(realpath "$1")
identity=$(realpath "$2")
dir=$3
backup=${4:-latest}
image=${STEWARD_IMAGE:-steward/steward:0.1.0}
read -r -a compose <<<"${COMPOSE:-docker compose}"
case $dir in /*) ;; *) echo "DIR must be an absolute path: $dir" >&2; exit 2 ;; esac
parent=$(dirname "$dir")
state="$parent/.$(basename "$dir").rebuild"
filled() { [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; }
if filled && [ ! -e "$state" ]; then
  echo "$dir holds files already: this is for an empty host (nothing was changed)" >&2
  exit 1
fi
mkdir -p "$parent"
if [ -s "$state" ]; then
  log "a run stopped after step(s) $(paste -sd, "$state"): going on from there"
fi
touch "$state"
finished() { grep -qx "$1" "$state"; }
mark() { finished "$1" || echo "$1" >>"$state"; }

# The kit is moved into place whole (built beside DIR, then renamed): DIR with files is a
# finished import even if the run was killed before it could say so.
if finished 1 || filled; then
  log "step 1: done already (the kit is in $dir)"
else
  log "step 1: the kit into $dir; backups paused until the restore is done"
  throwaway -i --user 0 --network none -v "$parent:$parent" \
    -v "$identity:/run/kit-identity:ro" --entrypoint steward "$image" \
    kit import --identity /run/kit-identity - "$dir" <"$kit"
fi
mark 1
cd "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The backup service reads and restores encrypted backups with the identity in
# secrets/age_identity: kept off the old host, it is needed here for the restore.
if ! grep -q '^AGE-SECRET-KEY-' secrets/age_identity 2>/dev/null; then
  log "the age identity into secrets/age_identity for the restore (put the comments back afterwards to keep it off this host)"
  install -m 0444 "$identity" secrets/age_identity
fi

# Again after a kill, the import skips what the stream holds; it must be done before step 3
# (whose setup makes the consumers, after which an import is refused).
if finished 2; then
  log "step 2: done already (the audit trail is on NATS)"
else
  log "step 2: the audit trail onto a fresh NATS, before Steward's consumers exist"
  "${compose[@]}" up -d nats
  # With the backup service's settings, as a one-off without its dependencies (setup would
  # create the consumers the import must come before).
  "${compose[@]}" run --rm -T --no-deps backup steward-backup extract "$backup" events \
    >"$work/events.ndjson"
  "${compose[@]}" run --rm -T setup events import - <"$work/events.ndjson"
  mark 2
fi

log "step 3: the stack (empty; its backups refuse to run until step 4 is done)"
"${compose[@]}" up -d
mark 3

# A restore killed here is run again whole (the backup service finishes or queues the first).
if finished 4; then
  log "step 4: done already (restored)"
else
  log "step 4: the restore: data, repositories, certificates"
  "${compose[@]}" run --rm -T steward backup list
  "${compose[@]}" run --rm -T steward restore "$backup" --yes --no-safety-backup
  # nginx did not start without its certificates, or serves none yet: now they are back.
  "${compose[@]}" restart nginx
  mark 4
fi

log "step 5: the old flows"
"${compose[@]}" run --rm -T steward audit
rm -f "$state"
log "done: point DNS at this host (docs/runbooks.md, step 6)"
