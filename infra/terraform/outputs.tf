output "public_ip" {
  description = "Elastic IP of the host."
  value       = aws_eip.host.public_ip
}

output "url" {
  description = "Where Gitea answers once Ansible has deployed it."
  value       = "https://${var.domain_name}"
}

output "ssh" {
  description = "How to reach the host (from one of ssh_allowed_cidrs)."
  value       = "ssh ubuntu@${var.domain_name}"
}

output "backup_bucket" {
  description = "STEWARD_S3_BUCKET of steward-backup."
  value       = aws_s3_bucket.backups.bucket
}

output "host_role_arn" {
  description = "Instance role: steward-backup's S3 credentials come from it (no keys on the host)."
  value       = aws_iam_role.host.arn
}

output "secrets_path" {
  description = "SSM Parameter Store path of the generated secrets, for Ansible's steward_secrets_path."
  value       = local.secrets_path
}

output "smtp_endpoint" {
  description = "SES SMTP endpoint the notifier sends through (the full URL is the smtp-url secret)."
  value       = "email-smtp.${var.region}.amazonaws.com:587"
}

output "ansible_inventory" {
  description = "An inventory line for infra/ansible."
  value       = "${var.domain_name} ansible_user=ubuntu steward_domain=${var.domain_name} steward_backup_bucket=${aws_s3_bucket.backups.bucket} steward_aws_region=${var.region} steward_secrets_path=${local.secrets_path}"
}
