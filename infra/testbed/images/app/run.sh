#!/bin/sh
# v3 is the broken release: it logs why and never serves, so its healthcheck fails.
if [ "$(cat /VERSION)" = v3 ]; then
  echo "app v3: fatal: cannot read configuration /etc/app.conf" >&2
  exec sleep 86400
fi
echo "app $(cat /VERSION) listening on :8080"
exec httpd -f -v -p 8080 -h /www
