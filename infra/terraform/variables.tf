variable "name" {
  description = "Name of this Gitea installation; prefixes every resource name and the secrets' path."
  type        = string
  default     = "gitea"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name: 3 to 32 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the host, the backup bucket and the secrets."
  type        = string
  default     = "eu-central-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region: an AWS region name such as eu-central-1."
  }
}

variable "domain_name" {
  description = "Public name of the Gitea host (an A record is created for it), e.g. git.example.org."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.domain_name))
    error_message = "domain_name: a lowercase DNS name such as git.example.org."
  }
}

variable "hosted_zone_id" {
  description = "Route 53 hosted zone that holds domain_name (and mail_from_domain's SES records)."
  type        = string

  validation {
    condition     = can(regex("^Z[A-Z0-9]{5,31}$", var.hosted_zone_id))
    error_message = "hosted_zone_id: a Route 53 zone id such as Z0123456789ABCDEFGHIJ."
  }
}

variable "ssh_allowed_cidrs" {
  description = "IPv4 CIDR blocks allowed to reach SSH (port 22): the operators' and the CI runner's addresses. Never the whole internet."
  type        = list(string)

  validation {
    condition     = length(var.ssh_allowed_cidrs) > 0 && alltrue([for c in var.ssh_allowed_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":") && !startswith(c, "0.0.0.0/")])
    error_message = "ssh_allowed_cidrs: at least one valid IPv4 CIDR block, and not 0.0.0.0/N."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key installed for the ubuntu user."
  type        = string

  validation {
    condition     = can(regex("^(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/=]+", var.ssh_public_key))
    error_message = "ssh_public_key: an OpenSSH public key line (ssh-ed25519 recommended)."
  }
}

variable "instance_type" {
  description = "EC2 instance type. t3.small (2 vCPU, 2 GiB) runs Gitea, PostgreSQL, nginx and Steward for a small team."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type: an EC2 instance type such as t3.small."
  }
}

variable "root_volume_gb" {
  description = "Size of the encrypted gp3 root volume in GiB (repositories, database, Docker images)."
  type        = number
  default     = 40

  validation {
    condition     = var.root_volume_gb >= 20 && var.root_volume_gb <= 2048
    error_message = "root_volume_gb: from 20 to 2048."
  }
}

variable "availability_zone" {
  description = "Availability zone of the subnet and host. Empty: the region's zone a."
  type        = string
  default     = ""

  validation {
    condition     = var.availability_zone == "" || can(regex("^[a-z]{2}(-[a-z]+)+-[0-9][a-z]$", var.availability_zone))
    error_message = "availability_zone: empty, or a zone name such as eu-central-1a."
  }
}

variable "vpc_cidr" {
  description = "Address range of the VPC."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr: an IPv4 CIDR block."
  }
}

variable "public_subnet_cidr" {
  description = "Address range of the public subnet, inside vpc_cidr."
  type        = string
  default     = "10.42.1.0/24"

  validation {
    condition     = can(cidrhost(var.public_subnet_cidr, 0))
    error_message = "public_subnet_cidr: an IPv4 CIDR block."
  }
}

variable "backup_bucket_name" {
  description = "Name of the S3 bucket for Steward's backups (globally unique). Empty: <name>-steward-backups-<account id>."
  type        = string
  default     = ""

  validation {
    condition     = var.backup_bucket_name == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.backup_bucket_name))
    error_message = "backup_bucket_name: empty, or 3 to 63 lowercase letters, digits, '.' or '-'."
  }
}

variable "backup_noncurrent_days" {
  description = "Days an overwritten or deleted backup object is kept as a non-current version (protects against a bad prune or a compromised host)."
  type        = number
  default     = 30

  validation {
    condition     = var.backup_noncurrent_days >= 1 && var.backup_noncurrent_days <= 3650
    error_message = "backup_noncurrent_days: from 1 to 3650."
  }
}

variable "backup_lock_mode" {
  description = "S3 Object Lock on the backup bucket: \"\" (off), \"GOVERNANCE\" (an account administrator with s3:BypassGovernanceRetention can still shorten or remove a lock) or \"COMPLIANCE\" (nobody can, not even the root user, until it ends). Every new object is locked for backup_lock_days; Steward's retention keeps a locked backup until its lock ends."
  type        = string
  default     = ""

  validation {
    condition     = contains(["", "GOVERNANCE", "COMPLIANCE"], var.backup_lock_mode)
    error_message = "backup_lock_mode: \"\", \"GOVERNANCE\" or \"COMPLIANCE\"."
  }
}

variable "backup_lock_days" {
  description = "Days each new backup object stays locked when backup_lock_mode is set (at least the age of the oldest backup STEWARD_BACKUP_RETENTION keeps, or retention waits for the lock)."
  type        = number
  default     = 30

  validation {
    condition     = var.backup_lock_days >= 1 && var.backup_lock_days <= 3650
    error_message = "backup_lock_days: from 1 to 3650."
  }
}

variable "mail_from_domain" {
  description = "Domain the notifier sends mail from through SES (verified with DKIM records in hosted_zone_id)."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.mail_from_domain))
    error_message = "mail_from_domain: a lowercase DNS name such as example.org."
  }
}
