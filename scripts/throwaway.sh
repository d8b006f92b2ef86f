# Sourced by the scripts that run a command in a throw-away container (adopt.sh, rebuild.sh).
#
# throwaway ARGS...: `docker run ARGS` in a container removed afterwards, returning the
# command's exit code. Not `docker run --rm`: against Podman's Docker-compatible API (4.3) it
# exits 0 whatever the command's code, so a refusal or a failed copy would pass unseen
# (adopt.sh copied old data over a volume already holding the new stack's). Without --rm
# the code is right on both engines; the container is removed once it is read.
# Labelled, so one a killed script left behind (exited) goes at the next call.
throwaway() {
  local name="steward-throwaway-$$-$RANDOM" code=0 left
  left=$(docker ps -aq --filter label=steward.throwaway --filter status=exited 2>/dev/null || true)
  # shellcheck disable=SC2086 # one argument per id
  [ -z "$left" ] || docker rm -v $left >/dev/null 2>&1 || true
  docker run --name "$name" --label steward.throwaway=true "$@" || code=$?
  docker rm -f -v "$name" >/dev/null 2>&1 || true
  return "$code"
}
