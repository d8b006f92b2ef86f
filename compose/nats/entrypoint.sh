#!/bin/sh
# nats-server takes each user's password from its environment ($STEWARD_<NAME>_PASSWORD in
# authorization.conf): export them from the mounted secret files, then become the server.
set -eu
for file in /run/secrets/nats_*_password; do
  name=$(basename "$file" _password)
  name=$(echo "${name#nats_}" | tr '[:lower:]' '[:upper:]')
  value=$(cat "$file")
  [ -n "$value" ] || { echo "entrypoint: $file is empty" >&2; exit 1; }
  export "STEWARD_${name}_PASSWORD=$value"
done
exec nats-server --config /etc/nats/nats.conf "$@"
