# Mail for the notifier through SES: a DKIM-signed domain identity in the hosted zone and an IAM
# user whose only right is sending from it. Its SMTP URL is stored as a secret (secrets.tf).
# A new SES account starts in the sandbox: request production access (docs/deploy.md).

resource "aws_ses_domain_identity" "mail" {
  domain = var.mail_from_domain
}

resource "aws_route53_record" "ses_verification" {
  zone_id = var.hosted_zone_id
  name    = "_amazonses.${var.mail_from_domain}"
  type    = "TXT"
  ttl     = 600
  records = [aws_ses_domain_identity.mail.verification_token]
}

resource "aws_ses_domain_identity_verification" "mail" {
  domain = aws_ses_domain_identity.mail.id

  depends_on = [aws_route53_record.ses_verification]
}

resource "aws_ses_domain_dkim" "mail" {
  domain = aws_ses_domain_identity.mail.domain
}

resource "aws_route53_record" "ses_dkim" {
  count = 3

  zone_id = var.hosted_zone_id
  name    = "${aws_ses_domain_dkim.mail.dkim_tokens[count.index]}._domainkey.${var.mail_from_domain}"
  type    = "CNAME"
  ttl     = 600
  records = ["${aws_ses_domain_dkim.mail.dkim_tokens[count.index]}.dkim.amazonses.com"]
}

resource "aws_iam_user" "smtp" {
  #checkov:skip=CKV_AWS_273:SES SMTP authenticates with credentials derived from an IAM user's access key; no role can be used over SMTP.
  name = "${var.name}-steward-smtp"
}

resource "aws_iam_group" "smtp" {
  name = "${var.name}-steward-smtp"
}

resource "aws_iam_user_group_membership" "smtp" {
  user   = aws_iam_user.smtp.name
  groups = [aws_iam_group.smtp.name]
}

data "aws_iam_policy_document" "send_mail" {
  statement {
    sid       = "SendFromTheDomainOnly"
    actions   = ["ses:SendRawEmail"]
    resources = [aws_ses_domain_identity.mail.arn]
  }
}

resource "aws_iam_group_policy" "smtp" {
  name   = "send-mail"
  group  = aws_iam_group.smtp.name
  policy = data.aws_iam_policy_document.send_mail.json
}

resource "aws_iam_access_key" "smtp" {
  user = aws_iam_user.smtp.name
}
