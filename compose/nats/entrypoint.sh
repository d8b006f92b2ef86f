#!/bin/sh
# nats-server takes each user's password from its environment ($STEWARD_<NAME>_PASSWORD in
# authorization.conf): export them from the mounted secret files, then become the server.
# nats-server parses a variable's value as config text (a password starting with a digit would
# be read as a number and refused), so each is exported as a quoted string.
# A host's leaf (nats.conf from `steward nats-config` with STEWARD_NATS_DOMAIN) also takes its
# link to the hub, password included, from the secret nats_leaf_url (one URL per line: a
# clustered hub's nodes).
# STEWARD_NATS_SECRETS and STEWARD_NATS_CONFIG point elsewhere than the container's paths
# (the tests run this script with nats-server outside a container).
set -eu
secrets=${STEWARD_NATS_SECRETS:-/run/secrets}
config=${STEWARD_NATS_CONFIG:-/etc/nats/nats.conf}
quotable() { # FILE VALUE
  [ -n "$2" ] || { echo "entrypoint: $1 is empty" >&2; exit 1; }
  case $2 in
    *'"'* | *'\'*) echo "entrypoint: $1: may not contain \" or \\" >&2; exit 1 ;;
  esac
  # Printable ASCII only: a newline or control character would end the value's line.
  # (The x keeps a trailing newline from being dropped by the command substitution.)
  [ "$(printf '%s' "$2" | tr -d ' -~'; echo x)" = x ] || {
    echo "entrypoint: $1: may not contain control characters (saved with Windows line ends, each line has a carriage return)" >&2
    exit 1
  }
}
missing=
# The hub (compose/hub.yml) also finds its leaves' link passwords one directory down
# (secrets/leaves/nats_leaf-<host>_password: one file per host, which compose cannot list),
# and only those there.
for file in "$secrets"/nats_*_password "$secrets"/leaves/nats_leaf-*_password; do
  [ -e "$file" ] || continue
  # nats_leaf-vps-a_password (the hub's user for host vps-a's link): STEWARD_LEAF_VPS_A_PASSWORD.
  name=$(basename "$file" _password)
  name=$(echo "${name#nats_}" | tr '[:lower:]-' '[:upper:]_')
  value=$(cat "$file")
  quotable "$file" "$value"
  export "STEWARD_${name}_PASSWORD=\"$value\""
done
# Every password the configuration names must have come: say which is missing (nats-server
# says only which variable, and only the first).
for var in $(grep -ho '\$STEWARD_[A-Z0-9_]*_PASSWORD' "$(dirname "$config")"/*.conf | tr -d '$' | sort -u); do
  # $var is [A-Z0-9_] only (the pattern above): safe to expand by name.
  eval "[ -n \"\${$var:-}\" ]" || missing="$missing $var"
done
if [ -n "$missing" ]; then
  echo "entrypoint: no secret file for$missing (secrets/nats_<user>_password; the hub's leaves': secrets/leaves/nats_leaf-<host>_password)" >&2
  exit 1
fi
if grep -q '\$STEWARD_LEAF_URL' "$config"; then
  file=$secrets/nats_leaf_url
  [ -r "$file" ] || {
    echo "entrypoint: $file is missing: this leaf's link to the hub, nats-leaf://leaf-<host>:<password>@<hub>:7422" >&2
    exit 1
  }
  # One URL per line: a clustered hub's nodes, each a URL (the leaf links to one of them and
  # to another when it is lost). Several go to nats-server as a list.
  urls=
  count=0
  while IFS= read -r value || [ -n "$value" ]; do
    [ -n "$value" ] || continue
    quotable "$file" "$value"
    # Exactly a user, a password and a host: nats-server prints a URL it cannot parse whole,
    # password included; a password with '/', '@', '%' or a space is such a URL.
    printf '%s' "$value" | grep -Eq '^(nats-leaf|tls)://[a-z0-9_-]+:[A-Za-z0-9._~-]+@[A-Za-z0-9.-]+(:[0-9]+)?$' || {
      echo "entrypoint: $file, URL $((count + 1)): not nats-leaf://leaf-<host>:<password>@<hub>:<port> (the password: letters, digits, '.', '_', '~', '-')" >&2
      exit 1
    }
    urls="$urls${urls:+,}\"$value\""
    count=$((count + 1))
  done < "$file"
  [ "$count" -gt 0 ] || { echo "entrypoint: $file is empty" >&2; exit 1; }
  if [ "$count" -eq 1 ]; then
    export "STEWARD_LEAF_URL=$urls"
  else
    export "STEWARD_LEAF_URL=[$urls]"
  fi
fi
# A node of a clustered hub (`steward nats-config --cluster-route`) logs in to its peers with the
# password in each route's URL: made here from the addresses on the configuration's
# `# steward-routes:` line and secrets/nats_route_password.
if grep -q '\$STEWARD_ROUTES' "$config"; then
  file=$secrets/nats_route_password
  password=$(cat "$file")
  printf '%s' "$password" | grep -Eq '^[A-Za-z0-9._~-]+$' || {
    echo "entrypoint: $file: the route password goes into URLs: letters, digits, '.', '_', '~', '-' only" >&2
    exit 1
  }
  addresses=$(sed -n 's/^# steward-routes: //p' "$config")
  [ -n "$addresses" ] || {
    echo "entrypoint: $config names \$STEWARD_ROUTES but has no '# steward-routes:' line (regenerate it with steward nats-config)" >&2
    exit 1
  }
  routes=
  # Split on blanks, never globbed: an address such as [fd00::1]:6222 is a pattern to the shell.
  set -f
  for address in $addresses; do
    printf '%s' "$address" | grep -Eq '^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):[0-9]+$' || {
      echo "entrypoint: $config: route address $address is not host:port" >&2
      exit 1
    }
    routes="$routes${routes:+,}\"nats-route://route:$password@$address\""
  done
  export "STEWARD_ROUTES=[$routes]"
fi
exec nats-server --config "$config" "$@"
