#!/usr/bin/env bash
# Creates ./secrets for docker-compose.yml: random passwords for PostgreSQL and each NATS user,
# the approval-link key, the backup signing key (ed25519, by openssl), and placeholders for the
# SMTP URL, AWS keys, registry logins, the age identity, the second copy's keys and the
# backup heartbeat URL.
# Existing files are kept (run it again safely). The directory is root's alone; the files in
# it are readable by the containers that mount them, whatever user those run as.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
umask 077
mkdir -p secrets
random() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40; }
put() { # NAME CONTENT
  local file="secrets/$1"
  if [ ! -s "$file" ]; then printf '%s\n' "$2" >"$file"; echo "created $file"; fi
  chmod 0444 "$file"
}
put postgres_password "$(random)"
put approval_secret "$(random)$(random)"
put grafana_admin_password "$(random)"
# Alertmanager's token for the notifier's POST /alerts, and Prometheus' for Gitea's /metrics.
put alerts_token "$(random)"
put gitea_metrics_token "$(random)"
# The deployer's (profile deploy): the push webhook's secret (give it to Gitea's webhook) and
# the key of its approval links.
put deploy_webhook_secret "$(random)"
put deploy_approval_secret "$(random)$(random)"
for user in watcher updater backup health notifier deployer cli setup; do
  put "nats_${user}_password" "$(random)"
done
# Several hosts on leaf nodes only (leaf.yml): this host's link to the hub, with its password
# (docs/runbooks.md, "Several hosts on leaf nodes"). Empty: a leaf's NATS refuses to start.
put nats_leaf_url ""
put smtp_url "smtps://USER:PASSWORD@email-smtp.eu-west-1.amazonaws.com:465"
put aws_credentials "# Leave empty on EC2 with an instance role; otherwise:
# [default]
# aws_access_key_id = AKIA...
# aws_secret_access_key = ..."
put docker_config.json '{}'
put age_identity "# The age identity (AGE-SECRET-KEY-1...) matching STEWARD_BACKUP_AGE_RECIPIENTS, for
# verifying and restoring encrypted backups. Only comments: backups are still taken and
# encrypted, but not verified here (keep the key off-host, put it here when you restore)."
# The second copy's own keys (STEWARD_BACKUP_COPY_BUCKET in .env): empty, no keys of its own.
put backup_copy_access_key_id ""
put backup_copy_secret_access_key ""
# The heartbeat monitor's URL (STEWARD_BACKUP_HEARTBEAT_URL: healthchecks.io, Uptime Kuma
# push...), pinged after each verified backup; it is a credential. Empty: no heartbeat.
put backup_heartbeat_url ""
# The key backup manifests are signed with: made here, never sent anywhere.
if [ ! -s secrets/backup_signing_key ]; then
  openssl genpkey -algorithm ed25519 -out secrets/backup_signing_key
  echo "created secrets/backup_signing_key"
fi
chmod 0444 secrets/backup_signing_key
echo "backup signing public key (STEWARD_BACKUP_TRUSTED_KEYS in .env; keep a copy off this host):"
openssl pkey -in secrets/backup_signing_key -pubout | sed -n 2p
chmod 0700 secrets
echo "edit secrets/smtp_url (and secrets/aws_credentials off EC2), then: docker-compose up -d"
