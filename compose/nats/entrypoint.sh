#!/bin/sh
# nats-server takes each user's password from its environment ($STEWARD_<NAME>_PASSWORD in
# authorization.conf): export them from the mounted secret files, then become the server.
# nats-server parses a variable's value as config text (a password starting with a digit would
# be read as a number and refused), so each is exported as a quoted string.
set -eu
for file in /run/secrets/nats_*_password; do
  name=$(basename "$file" _password)
  name=$(echo "${name#nats_}" | tr '[:lower:]' '[:upper:]')
  value=$(cat "$file")
  [ -n "$value" ] || { echo "entrypoint: $file is empty" >&2; exit 1; }
  case $value in
    *'"'* | *'\'*) echo "entrypoint: $file: a password may not contain \" or \\" >&2; exit 1 ;;
  esac
  export "STEWARD_${name}_PASSWORD=\"$value\""
done
exec nats-server --config /etc/nats/nats.conf "$@"
