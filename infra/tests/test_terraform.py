"""Security-relevant settings of infra/terraform, read with python-hcl2 (no terraform binary can
run here). Each rule is a function returning the problems it finds; the tests assert none in the
real code, and that each rule does catch a deliberately broken copy of it."""

import re
from pathlib import Path

import hcl2
import yaml
import pytest

TF = Path(__file__).resolve().parent.parent / "terraform"
WORLD = {"0.0.0.0/0", "::/0"}


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def norm(node):
    """python-hcl2 8 keeps quotes and bookkeeping keys; this gives plain values."""
    if isinstance(node, dict):
        return {unquote(k): norm(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [norm(v) for v in node]
    return unquote(node)


def parse(texts):
    """{kind: {type: {name: body}}} for resource/data, {name: body} for variables."""
    out = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    for text in texts:
        doc = norm(hcl2.loads(text))
        for kind in ("resource", "data"):
            for entry in doc.get(kind, []):
                for rtype, named in entry.items():
                    out[kind].setdefault(rtype, {}).update(named)
        for kind in ("variable", "output"):
            for entry in doc.get(kind, []):
                out[kind].update(entry)
    return out


def sources():
    return {p.name: p.read_text() for p in sorted(TF.glob("*.tf"))}


@pytest.fixture(scope="module")
def tf():
    return parse(sources().values())


def blocks(body, name):
    value = body.get(name, [])
    return value if isinstance(value, list) else [value]


def as_list(value):
    return value if isinstance(value, list) else [value]


# --- rules -------------------------------------------------------------------------------


def ssh_problems(tf):
    problems = []
    rules = list(tf["resource"].get("aws_vpc_security_group_ingress_rule", {}).items())
    for sg_name, sg in tf["resource"].get("aws_security_group", {}).items():
        rules += [(f"{sg_name} (inline)", r) for r in blocks(sg, "ingress")]
    for name, rule in rules:
        low, high = int(rule.get("from_port", 0)), int(rule.get("to_port", 65535))
        cidrs = set(as_list(rule.get("cidr_ipv4", []))) | set(as_list(rule.get("cidr_ipv6", [])))
        cidrs |= set(as_list(rule.get("cidr_blocks", []))) | set(as_list(rule.get("ipv6_cidr_blocks", [])))
        if str(rule.get("ip_protocol", rule.get("protocol", ""))) == "-1":
            low, high = 0, 65535
        if low <= 22 <= high:
            if cidrs & WORLD:
                problems.append(f"{name}: port 22 open to {sorted(cidrs & WORLD)}")
            if "var.ssh_allowed_cidrs" not in str(rule.get("for_each", "")) + str(cidrs):
                problems.append(f"{name}: port 22 not restricted to var.ssh_allowed_cidrs")
        elif cidrs & WORLD and (low, high) not in {(80, 80), (443, 443)}:
            problems.append(f"{name}: ports {low}-{high} open to the world")
    if not any(int(r.get("from_port", 0)) == 22 for _, r in rules):
        problems.append("no SSH rule at all")
    variable = tf["variable"].get("ssh_allowed_cidrs", {})
    if "default" in variable:
        problems.append("ssh_allowed_cidrs has a default: the operator must choose")
    if "0.0.0.0/" not in str(variable.get("validation", "")):
        problems.append("ssh_allowed_cidrs' validation does not refuse 0.0.0.0/N")
    return problems


def host_problems(tf):
    problems = []
    for name, host in tf["resource"].get("aws_instance", {}).items():
        roots = blocks(host, "root_block_device")
        if not roots or any(r.get("encrypted") is not True for r in roots):
            problems.append(f"{name}: root volume not encrypted")
        if any(r.get("volume_type") != "gp3" for r in roots):
            problems.append(f"{name}: root volume not gp3")
        if any(e.get("encrypted") is not True for e in blocks(host, "ebs_block_device")):
            problems.append(f"{name}: an unencrypted EBS volume")
        meta = blocks(host, "metadata_options")
        if not meta or meta[0].get("http_tokens") != "required":
            problems.append(f"{name}: IMDSv2 not required")
        if host.get("associate_public_ip_address") is True:
            problems.append(f"{name}: automatic public IP (the Elastic IP is the address)")
    if not tf["resource"].get("aws_instance"):
        problems.append("no host")
    return problems


def bucket_problems(tf):
    res = tf["resource"]
    problems = []
    versioning = [v for v in res.get("aws_s3_bucket_versioning", {}).values()]
    if not any(blocks(v, "versioning_configuration")[0].get("status") == "Enabled" for v in versioning):
        problems.append("versioning not enabled")
    sse = list(res.get("aws_s3_bucket_server_side_encryption_configuration", {}).values())
    algos = [
        d.get("sse_algorithm")
        for s in sse
        for r in blocks(s, "rule")
        for d in blocks(r, "apply_server_side_encryption_by_default")
    ]
    if not algos or any(a not in {"aws:kms", "aws:kms:dsse"} for a in algos):
        problems.append(f"default encryption is not KMS: {algos}")
    pab = list(res.get("aws_s3_bucket_public_access_block", {}).values())
    flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    if not pab or any(p.get(f) is not True for p in pab for f in flags):
        problems.append("public access not blocked on all four counts")
    policies = tf["data"].get("aws_iam_policy_document", {})
    tls = [
        s
        for p in policies.values()
        for s in blocks(p, "statement")
        if s.get("effect") == "Deny"
        and any(c.get("variable") == "aws:SecureTransport" and "false" in as_list(c.get("values")) for c in blocks(s, "condition"))
    ]
    attached = " ".join(str(p.get("policy")) for p in res.get("aws_s3_bucket_policy", {}).values())
    if not tls or not any(f"aws_iam_policy_document.{n}" in attached for n, p in policies.items() if any(s in tls for s in blocks(p, "statement"))):
        problems.append("no TLS-only bucket policy attached")
    rules = [r for lc in res.get("aws_s3_bucket_lifecycle_configuration", {}).values() for r in blocks(lc, "rule")]
    if not any(blocks(r, "noncurrent_version_expiration") for r in rules):
        problems.append("non-current versions never expire")
    if not any(blocks(r, "abort_incomplete_multipart_upload") for r in rules):
        problems.append("incomplete multipart uploads are never aborted")
    return problems


ALLOWED_ACTIONS = {
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:GetBucketLocation",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:GetBucketObjectLockConfiguration",
    "s3:GetObjectRetention",
    "s3:GetObjectLegalHold",
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:GenerateDataKey",
}
ALLOWED_RESOURCES = {
    "${aws_s3_bucket.backups.arn}",
    "${aws_s3_bucket.backups.arn}/*",
    "${aws_kms_key.backups.arn}",
}


def iam_problems(tf):
    res = tf["resource"]
    problems = []
    for kind in ("aws_iam_role_policy_attachment", "aws_iam_policy_attachment"):
        for name, a in res.get(kind, {}).items():
            problems.append(f"{kind}.{name} attaches {a.get('policy_arn')} (managed policies are broader than the bucket)")
    role_policies = [p for p in res.get("aws_iam_role_policy", {}).values() if "aws_iam_role.host" in str(p.get("role"))]
    if not role_policies:
        problems.append("the host role has no policy")
    documents = tf["data"].get("aws_iam_policy_document", {})
    for p in role_policies:
        match = re.search(r"data\.aws_iam_policy_document\.(\w+)\.json", str(p.get("policy")))
        if not match or match.group(1) not in documents:
            problems.append(f"host role policy is not a checked policy document: {p.get('policy')}")
            continue
        for s in blocks(documents[match.group(1)], "statement"):
            if s.get("effect", "Allow") != "Allow":
                continue
            for action in as_list(s.get("actions", [])):
                if action not in ALLOWED_ACTIONS:
                    problems.append(f"host role may {action}")
            for resource in as_list(s.get("resources", [])):
                if resource not in ALLOWED_RESOURCES:
                    problems.append(f"host role reaches {resource}")
    return problems


def secret_problems(tf):
    problems = []
    for name, p in tf["resource"].get("aws_ssm_parameter", {}).items():
        if p.get("type") != "SecureString" or "aws_kms_key" not in str(p.get("key_id")):
            problems.append(f"{name}: not a SecureString under a Steward key")
    for name, v in tf["variable"].items():
        if re.search(r"password|secret|token", name) and "default" in v:
            problems.append(f"variable {name} carries a secret default")
    if not tf["resource"].get("random_password"):
        problems.append("no generated secrets")
    return problems


def variable_problems(tf):
    problems = []
    for name, v in tf["variable"].items():
        for field in ("description", "type", "validation"):
            if field not in v:
                problems.append(f"variable {name} has no {field}")
    for name, o in tf["output"].items():
        if "description" not in o:
            problems.append(f"output {name} has no description")
    return problems


ASSIGN = re.compile(r"^( *)([A-Za-z_][\w-]*|\"[^\"]+\")( *)= ")


def format_problems(name, text):
    """What `terraform fmt` would change that can be checked without it: two-space indents,
    no tabs or trailing blanks, one final newline, and `=` aligned across consecutive
    single-line attributes of one block (one space after the longest name)."""
    problems = []
    if not text.endswith("\n") or text.endswith("\n\n"):
        problems.append(f"{name}: must end with exactly one newline")
    group = []  # (line number, name, spaces before '=', indent)

    def close():
        width = max((len(key) for _, key, _, _ in group), default=0)
        for line_no, key, spaces, _ in group:
            if len(key) + spaces != width + 1:
                problems.append(f"{name}:{line_no}: '=' not aligned with its neighbours")
        group.clear()

    depth = 0
    for line_no, line in enumerate(text.split("\n"), 1):
        if "\t" in line or line != line.rstrip():
            problems.append(f"{name}:{line_no}: tab or trailing blank")
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        closing = stripped.startswith(("}", "]", ")"))
        if stripped and not stripped.startswith("#") and indent != 2 * (depth - closing):
            problems.append(f"{name}:{line_no}: indent {indent}, expected {2 * (depth - closing)}")
        # Brackets inside strings ("${x}") open and close on the same line: only the balance counts.
        balance = sum(line.count(c) for c in "{[(") - sum(line.count(c) for c in "}])")
        m = ASSIGN.match(line)
        if m and balance == 0:
            if group and (group[-1][0] != line_no - 1 or group[-1][3] != indent):
                close()
            group.append((line_no, m.group(2), len(m.group(3)), indent))
        else:
            close()
        depth += balance
    close()
    return problems


# --- tests -------------------------------------------------------------------------------


def test_ssh_is_restricted_and_only_80_and_443_face_the_world(tf):
    assert ssh_problems(tf) == []


def test_the_host_disk_is_encrypted_and_imdsv2_required(tf):
    assert host_problems(tf) == []


def test_the_backup_bucket_is_versioned_encrypted_private_tls_only_with_lifecycle(tf):
    assert bucket_problems(tf) == []


def test_the_host_role_reaches_the_backup_bucket_and_its_key_only(tf):
    assert iam_problems(tf) == []


def test_secrets_are_generated_and_stored_encrypted(tf):
    assert secret_problems(tf) == []


def test_variables_and_outputs_are_documented_and_validated(tf):
    assert variable_problems(tf) == []


def test_files_are_terraform_fmt_clean():
    problems = [p for name, text in sources().items() for p in format_problems(name, text)]
    assert problems == []


def test_every_checkov_skip_says_why():
    skips = [
        (name, line.strip())
        for name, text in sources().items()
        for line in text.splitlines()
        if "checkov:skip" in line
    ]
    assert skips, "no skips found: the scan below would be vacuous"
    for name, line in skips:
        assert re.match(r"#checkov:skip=CKV2?_AWS_\d+:.{20,}", line), f"{name}: {line}"


# Each rule catches what it exists for, in a broken copy of the real code.
BREAKS = [
    (ssh_problems, "network.tf", "cidr_ipv4         = each.value", 'cidr_ipv4         = "0.0.0.0/0"'),
    (ssh_problems, "network.tf", "from_port         = 443", "from_port         = 3000"),
    (host_problems, "compute.tf", "encrypted             = true", "encrypted             = false"),
    (host_problems, "compute.tf", 'http_tokens   = "required"', 'http_tokens   = "optional"'),
    (bucket_problems, "backups.tf", 'status = "Enabled"\n  }', 'status = "Suspended"\n  }'),
    (bucket_problems, "backups.tf", "restrict_public_buckets = true", "restrict_public_buckets = false"),
    (bucket_problems, "backups.tf", 'values   = ["false"]', 'values   = ["true"]'),
    (bucket_problems, "backups.tf", "abort_incomplete_multipart_upload {", "no_abort {"),
    (bucket_problems, "backups.tf", "noncurrent_version_expiration {", "no_expiry {"),
    (iam_problems, "iam.tf", '"s3:DeleteObject",', '"s3:*",'),
    (iam_problems, "iam.tf", 'resources = ["${aws_s3_bucket.backups.arn}/*"]', 'resources = ["*"]'),
    (secret_problems, "secrets.tf", 'type        = "SecureString"', 'type        = "String"'),
]


@pytest.mark.parametrize("rule,file,good,bad", BREAKS, ids=[f"{r.__name__}:{b[:30]}" for r, _, _, b in BREAKS])
def test_each_rule_catches_its_breakage(rule, file, good, bad):
    texts = sources()
    assert good in texts[file], f"{file} no longer contains {good!r}: update this test"
    texts[file] = texts[file].replace(good, bad, 1)
    assert rule(parse(texts.values())) != []


def test_the_format_rule_catches_misalignment_and_bad_indents():
    text = sources()["compute.tf"]
    assert format_problems("compute.tf", text.replace("instance_type          =", "instance_type =", 1))
    assert format_problems("compute.tf", text.replace("\n  most_recent", "\n   most_recent", 1))


def test_iam_rule_catches_a_managed_policy_attachment(tf):
    text = sources()["iam.tf"] + (
        '\nresource "aws_iam_role_policy_attachment" "s3" {\n'
        '  role       = aws_iam_role.host.name\n'
        '  policy_arn = "arn:aws:iam::aws:policy/AmazonS3FullAccess"\n}\n'
    )
    texts = sources()
    texts["iam.tf"] = text
    assert any("AmazonS3FullAccess" in p for p in iam_problems(parse(texts.values())))


def ssm_names(tf, text):
    """Short names of the SSM parameters Terraform creates, for_each expanded."""
    users = re.search(r"nats_users\s*=\s*toset\(\[([^\]]*)\]\)", text)
    assert users, "secrets.tf: nats_users not found"
    nats_users = re.findall(r'"([^"]+)"', users.group(1))
    names = set()
    for p in tf["resource"].get("aws_ssm_parameter", {}).values():
        short = p["name"].rsplit("/", 1)[-1]
        if "${each.key}" in short:
            names.update(short.replace("${each.key}", user) for user in nats_users)
        else:
            names.add(short)
    return names


def test_terraform_stores_every_secret_the_ansible_deploy_reads(tf):
    defaults = yaml.safe_load(
        (TF.parent / "ansible" / "roles" / "deploy" / "defaults" / "main.yml").read_text()
    )
    names = defaults["deploy_secret_names"] + defaults["deploy_deployer_secret_names"]
    assert set(names) <= ssm_names(tf, sources()["secrets.tf"])
