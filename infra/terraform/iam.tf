# The host's instance role may do exactly what steward-backup does with its bucket: list it,
# read, write and delete objects (retention prunes), multipart uploads (and aborting them),
# with the bucket's KMS key. Nothing else: no other bucket, no other service.

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "host" {
  name               = "${var.name}-host"
  description        = "Gitea host: Steward's backups in ${local.backup_bucket}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_instance_profile" "host" {
  name = "${var.name}-host"
  role = aws_iam_role.host.name
}

data "aws_iam_policy_document" "steward_backup" {
  statement {
    sid       = "ListTheBucket"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation", "s3:GetBucketObjectLockConfiguration"]
    resources = [aws_s3_bucket.backups.arn]
  }

  statement {
    sid = "ObjectsInTheBucket"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
      # Read-only: retention asks whether a backup is still locked (never bypasses a lock).
      "s3:GetObjectRetention",
      "s3:GetObjectLegalHold",
    ]
    resources = ["${aws_s3_bucket.backups.arn}/*"]
  }

  statement {
    sid       = "TheBucketKey"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.backups.arn]
  }
}

resource "aws_iam_role_policy" "steward_backup" {
  name   = "steward-backup"
  role   = aws_iam_role.host.id
  policy = data.aws_iam_policy_document.steward_backup.json
}
