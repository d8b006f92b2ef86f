# The backup bucket: versioned, encrypted with a key of its own, never public, TLS only, with a
# lifecycle that expires old versions and aborts forgotten multipart uploads. Steward's own
# retention (STEWARD_BACKUP_RETENTION) decides which backups exist; versioning keeps what it
# or anyone else deleted for backup_noncurrent_days more.

data "aws_caller_identity" "current" {}

locals {
  backup_bucket = var.backup_bucket_name != "" ? var.backup_bucket_name : "${var.name}-steward-backups-${data.aws_caller_identity.current.account_id}"
}

resource "aws_kms_key" "backups" {
  description             = "${var.name}: Steward backups in S3"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms_account_admin.json
}

resource "aws_kms_alias" "backups" {
  name          = "alias/${var.name}-steward-backups"
  target_key_id = aws_kms_key.backups.key_id
}

# Key policy: the account administers the key; use is granted by IAM policies (the host role).
# In a key policy "*" is the key itself, not every resource.
data "aws_iam_policy_document" "kms_account_admin" {
  #checkov:skip=CKV_AWS_111:A key policy's resource "*" is this key only; the account root administers it, as in AWS's default key policy.
  #checkov:skip=CKV_AWS_356:A key policy's resource "*" is this key only.
  #checkov:skip=CKV_AWS_109:A key policy's resource "*" is this key only; without the account statement the key becomes unmanageable.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_s3_bucket" "backups" {
  #checkov:skip=CKV_AWS_18:Access logging needs a second bucket; every Steward backup, prune and restore is already an event in the audit stream.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles the cost; versioning protects against deletion. Add a replication rule for a second region if needed.
  #checkov:skip=CKV2_AWS_62:Steward publishes backup.done/backup.failed itself; S3 event notifications would only duplicate them.
  bucket = local.backup_bucket

  tags = {
    Name = local.backup_bucket
  }
}

resource "aws_s3_bucket_ownership_controls" "backups" {
  bucket = aws_s3_bucket.backups.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "backups" {
  bucket                  = aws_s3_bucket.backups.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "backups" {
  bucket = aws_s3_bucket.backups.id

  versioning_configuration {
    status = "Enabled"
  }
}

# S3 Object Lock (optional): every new object version is locked for backup_lock_days, so a
# compromised host (or anyone with its role) can hide backups behind delete markers but never
# destroy or overwrite a locked version. Enabled on the existing versioned bucket (no new
# bucket); Steward sends Content-MD5 on uploads, which S3 requires here.
resource "aws_s3_bucket_object_lock_configuration" "backups" {
  count  = var.backup_lock_mode == "" ? 0 : 1
  bucket = aws_s3_bucket.backups.id

  depends_on = [aws_s3_bucket_versioning.backups]

  rule {
    default_retention {
      mode = var.backup_lock_mode
      days = var.backup_lock_days
    }
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id

  rule {
    bucket_key_enabled = true

    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.backups.arn
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id

  # Versioning must be on before a rule about non-current versions means anything.
  depends_on = [aws_s3_bucket_versioning.backups]

  rule {
    id     = "expire-noncurrent-and-abort-incomplete"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.backup_noncurrent_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }

    expiration {
      expired_object_delete_marker = true
    }
  }
}

# Only TLS: a request over plain HTTP is denied whoever makes it.
data "aws_iam_policy_document" "backups_tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.backups.arn, "${aws_s3_bucket.backups.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "backups" {
  bucket = aws_s3_bucket.backups.id
  policy = data.aws_iam_policy_document.backups_tls_only.json

  # A bucket policy is refused while the public access block is being applied.
  depends_on = [aws_s3_bucket_public_access_block.backups]
}
