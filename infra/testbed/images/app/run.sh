#!/bin/sh
# v3 is the broken release: it logs why and never serves, so its healthcheck fails.
# PID 1 ignores SIGTERM unless it traps it: exit at once so a stop takes milliseconds, not
# the engine's 10 s kill timeout.
trap 'exit 0' TERM INT
if [ "$(cat /VERSION)" = v3 ]; then
  echo "app v3: fatal: cannot read configuration /etc/app.conf" >&2
  sleep 86400 &
  wait
  exit 1
fi
echo "app $(cat /VERSION) listening on :8080"
httpd -f -v -p 8080 -h /www &
wait
