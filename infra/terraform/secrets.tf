# Secrets are generated here and kept in SSM Parameter Store as SecureStrings under
# /<name>/steward/, encrypted with a key of their own. Ansible reads them on the control node
# and writes them to root-only files on the host (Docker secrets); the host's role cannot read
# them. They are also in the Terraform state: keep the state bucket encrypted and private.

locals {
  secrets_path = "/${var.name}/steward"

  # One NATS user per service (issue: per-service permissions) plus the operators' CLI and
  # `steward setup`, the only user that may create or change the stream, consumers and buckets.
  nats_users = toset(["watcher", "updater", "backup", "health", "notifier", "deployer", "cli", "setup"])
}

resource "aws_kms_key" "secrets" {
  description             = "${var.name}: Steward secrets in SSM Parameter Store"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms_account_admin.json
}

resource "aws_kms_alias" "secrets" {
  name          = "alias/${var.name}-steward-secrets"
  target_key_id = aws_kms_key.secrets.key_id
}

resource "random_password" "database" {
  length  = 32
  special = false
}

# Signs approval links (STEWARD_APPROVAL_SECRET, at least 32 bytes).
resource "random_password" "approval" {
  length  = 64
  special = false
}

# The deployer's (compose profile `deploy`): the push webhook's secret (give it to Gitea's
# webhook) and the key that signs deployment approval links, its own.
resource "random_password" "deploy_webhook" {
  length  = 48
  special = false
}

resource "random_password" "deploy_approval" {
  length  = 64
  special = false
}

# Grafana's admin password (compose profile `monitoring`).
resource "random_password" "grafana" {
  length  = 32
  special = false
}

# Alertmanager's token for the notifier's POST /alerts, and Prometheus' for Gitea's /metrics
# (compose profile `monitoring`).
resource "random_password" "alerts" {
  length  = 40
  special = false
}

resource "random_password" "gitea_metrics" {
  length  = 40
  special = false
}

resource "random_password" "nats" {
  for_each = local.nats_users

  length  = 32
  special = false
}

resource "aws_ssm_parameter" "database_password" {
  name        = "${local.secrets_path}/postgres-password"
  description = "PostgreSQL password of the gitea database user"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.database.result
}

resource "aws_ssm_parameter" "approval_secret" {
  name        = "${local.secrets_path}/approval-secret"
  description = "Key that signs Steward's approval links"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.approval.result
}

resource "aws_ssm_parameter" "deploy_webhook_secret" {
  name        = "${local.secrets_path}/deploy-webhook-secret"
  description = "Secret of the deployer's push webhook (Gitea's webhook signs with it)"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.deploy_webhook.result
}

resource "aws_ssm_parameter" "deploy_approval_secret" {
  name        = "${local.secrets_path}/deploy-approval-secret"
  description = "Key that signs the deployer's approval links"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.deploy_approval.result
}

resource "aws_ssm_parameter" "grafana_admin_password" {
  name        = "${local.secrets_path}/grafana-admin-password"
  description = "Grafana's admin password (monitoring profile)"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.grafana.result
}

resource "aws_ssm_parameter" "alerts_token" {
  name        = "${local.secrets_path}/alerts-token"
  description = "Token Alertmanager sends to Steward's notifier (POST /alerts)"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.alerts.result
}

resource "aws_ssm_parameter" "gitea_metrics_token" {
  name        = "${local.secrets_path}/gitea-metrics-token"
  description = "Token Prometheus sends to Gitea's /metrics"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.gitea_metrics.result
}

resource "aws_ssm_parameter" "nats_password" {
  for_each = local.nats_users

  name        = "${local.secrets_path}/nats-${each.key}-password"
  description = "NATS password of Steward's ${each.key} user"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = random_password.nats[each.key].result
}

resource "aws_ssm_parameter" "smtp_url" {
  name        = "${local.secrets_path}/smtp-url"
  description = "STEWARD_SMTP_URL of the notifier: SES SMTP with STARTTLS"
  type        = "SecureString"
  key_id      = aws_kms_key.secrets.arn
  value       = "smtp://${aws_iam_access_key.smtp.id}:${urlencode(aws_iam_access_key.smtp.ses_smtp_password_v4)}@email-smtp.${var.region}.amazonaws.com:587?tls=required"
}
