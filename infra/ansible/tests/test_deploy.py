"""The deploy playbook, run for real: `ansible-playbook --connection=local` against a throw-away
target on this machine (a temporary directory as the stack's root and a compose project of its
own on the test bed's Docker engine), with the stack's public images swapped for the local
stand-ins of tests/compose/stand-ins.yml.

Secrets come from SSM Parameter Store as the playbook reads them in production, here served by
moto's server on 127.0.0.1 (AWS itself cannot be reached; moto implements the same API).

Needs the test bed's Docker engine and the images of `infra/testbed/stack-images.sh stand-ins`
and `... steward debug` (scripts/test.sh builds them before it runs infra/check.sh).
"""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest

from roletasks import role_tasks

REPO = Path(__file__).resolve().parents[3]
ANSIBLE = REPO / "infra" / "ansible"
BIN = Path(sys.executable).parent
IMAGES = [
    "steward-local/steward:debug",
    "steward-local/nats:latest",
    "steward-local/registry:latest",
    "steward-local/s3:latest",
    "steward-local/smtp:latest",
    "steward-test/app:v1",
    "steward-test/postgres:15",
    "steward-test/busybox:latest",
]
# What terraform's secrets.tf stores under <name>/steward/ (the nats ones: one per user).
NATS_USERS = ["watcher", "updater", "backup", "health", "notifier", "deployer", "cli", "setup"]
# Every long-running service of the stack (the CLI and monitoring are profiles).
SERVICES = {
    "postgres", "gitea", "nginx", "certbot", "nats", "sockproxy", "watcher", "updater", "backup",
    "health", "notifier", "registry", "s3", "smtp",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def ssm(tmp_path_factory):
    """moto's server on a free loopback port; yields a boto3 SSM client for it."""
    for image in IMAGES:
        if run(["docker", "image", "inspect", image]).returncode != 0:
            pytest.fail(f"image {image} missing: run infra/testbed/stack-images.sh "
                        "stand-ins and infra/testbed/stack-images.sh steward debug")
    port = free_port()
    log_dir = tmp_path_factory.mktemp("moto")
    log = open(log_dir / "moto.log", "w")
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, "moto_server did not answer within 30 s"
            assert server.poll() is None, "moto_server exited"
            time.sleep(0.2)
    client = boto3.client("ssm", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.endpoint = url
    try:
        yield client
    finally:
        server.terminate()
        server.wait(10)
        log.close()
        shutil.rmtree(log_dir, ignore_errors=True)


class Target:
    """A stack root in a temporary directory and a compose project of its own; `down -v` and
    the directory removed afterwards."""

    def __init__(self, tmp: Path, ssm):
        self.tmp = tmp
        self.ssm = ssm
        self.root = tmp / "stack"
        self.project = "ansible" + uuid.uuid4().hex[:10]
        self.secrets_path = f"/t{uuid.uuid4().hex[:10]}/steward"
        self.secrets = {
            "postgres-password": uuid.uuid4().hex,
            "approval-secret": uuid.uuid4().hex + uuid.uuid4().hex,
            "grafana-admin-password": uuid.uuid4().hex,
            "alerts-token": uuid.uuid4().hex,
            "gitea-metrics-token": uuid.uuid4().hex,
            "smtp-url": "smtp://smtp:2525",
            **{f"nats-{user}-password": uuid.uuid4().hex for user in NATS_USERS},
        }
        s3 = tmp / "s3"
        (s3 / "gitea-backups").mkdir(parents=True)
        maildir = tmp / "maildir"
        for sub in ["tmp", "new", "cur"]:
            (maildir / sub).mkdir(parents=True)
        docker_gid = os.stat("/var/run/docker.sock").st_gid
        compose = REPO / "tests" / "compose"
        self.vars = {
            "steward_domain": "gitea.test",
            "steward_letsencrypt_email": "ops@gitea.test",
            "steward_backup_bucket": "gitea-backups",
            "steward_aws_region": "us-east-1",
            "steward_secrets_path": self.secrets_path,
            "steward_mail_to": "ops@gitea.test",
            "steward_mail_from": "Steward <steward@gitea.test>",
            "tls_enabled": False,
            "deploy_root": str(self.root),
            "deploy_project": self.project,
            "deploy_compose_overrides": [str(compose / "stand-ins.yml")],
            "deploy_extra_files": [str(compose / "registry.yml"), str(compose / "fake-certbot.sh")],
            "deploy_wait_seconds": 180,
            "deploy_aws_credentials":
                "[default]\naws_access_key_id = e2e-key\naws_secret_access_key = e2e-secret-key\n",
            "deploy_env_extra": {
                "PUBLISH_ADDR": "127.0.0.1",
                "GITEA_SSH_ADDR": "127.0.0.1",
                "HTTP_PORT": free_port(),
                "HTTPS_PORT": free_port(),
                "GITEA_SSH_PORT": free_port(),
                "GITEA_IMAGE": "steward-test/app:v1",
                "NGINX_IMAGE": "steward-test/app:v1",
                "NGINX_CONFIG_CHECK": "false",
                "POSTGRES_IMAGE": "steward-test/postgres:15",
                "CERTBOT_IMAGE": "steward-test/busybox:latest",
                "NATS_IMAGE": "steward-local/nats:latest",
                "STEWARD_IMAGE": os.environ.get("STEWARD_STACK_IMAGE",
                                                "steward-local/steward:debug"),
                "DOCKER_GID": docker_gid,
                "E2E_S3_DIR": str(s3),
                "E2E_MAILDIR": str(maildir),
                "E2E_REGISTRY_PORT": free_port(),
                "E2E_UPDATER_PORT": free_port(),
                "E2E_PROMETHEUS_PORT": free_port(),
            },
        }
        for name, value in self.secrets.items():
            self.put_secret(name, value)
        # A parameter beside the stack's (the runner's token): not a file of the stack.
        self.put_secret("runner-token", "not-for-the-stack")

    def put_secret(self, name, value):
        self.ssm.put_parameter(Name=f"{self.secrets_path}/{name}", Value=value,
                               Type="SecureString", Overwrite=True)

    def playbook(self, *extra):
        """ansible-playbook deploy.yml on this machine; the completed process."""
        vars_file = self.tmp / "vars.json"
        vars_file.write_text(json.dumps(self.vars))
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-tmp"),
            "ANSIBLE_REMOTE_TEMP": str(self.tmp / "ansible-tmp"),
            # The SSM lookup runs on the control node: to moto, with dummy keys.
            "AWS_URL": self.ssm.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }
        inventory = self.tmp / "inventory.ini"
        inventory.write_text(f"[gitea]\nlocalhost ansible_python_interpreter={sys.executable}\n")
        return run([str(BIN / "ansible-playbook"), "--connection=local",
                    "--inventory", str(inventory), "--extra-vars", f"@{vars_file}",
                    *extra, str(ANSIBLE / "playbooks" / "deploy.yml")],
                   cwd=ANSIBLE, env=env)

    def containers(self):
        """service → (container id, status) of the project's long-running containers."""
        out = run(["docker", "ps", "--all", "--filter",
                   f"label=com.docker.compose.project={self.project}", "--filter",
                   "label=com.docker.compose.oneoff=False", "--format",
                   '{{.Label "com.docker.compose.service"}}\t{{.ID}}\t{{.Status}}'])
        assert out.returncode == 0, out.stderr
        rows = [line.split("\t") for line in out.stdout.splitlines()]
        return {service: (cid, status) for service, cid, status in rows}

    def down(self):
        compose = ["docker-compose", "--project-name", self.project, "--file",
                   "docker-compose.yml", "--file", "stand-ins.yml"]
        if self.root.exists():
            run(compose + ["down", "--volumes", "--timeout", "5"], cwd=self.root)


def recap(result):
    """(ok, changed, failed) from the play recap of localhost."""
    assert result.returncode == 0, f"ansible-playbook failed:\n{result.stdout}\n{result.stderr}"
    match = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)",
                      result.stdout)
    assert match, result.stdout
    return tuple(int(n) for n in match.groups())


def changed_tasks(result):
    """Names of the tasks that reported a change."""
    return re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:[^\n]*\n)*?changed:", result.stdout)


@pytest.fixture
def target(tmp_path, ssm):
    t = Target(tmp_path, ssm)
    try:
        yield t
    finally:
        t.down()
        # Files the containers wrote (s3, maildir) belong to their users: root removes them.
        shutil.rmtree(tmp_path, ignore_errors=True)


# One stack for the three runs: bringing it up is most of the test's time, and the CI's two
# cores share it with the Rust tests.
def test_deploy_brings_the_stack_up_healthy_a_second_run_changes_nothing_a_rotated_secret_reaches_the_containers(target):
    first = target.playbook()
    _, changed, _ = recap(first)
    assert changed > 0, first.stdout

    containers = target.containers()
    # `steward setup` ran once and exited 0 before the services started.
    setup = containers.pop("setup", ("", "missing"))
    assert setup[1].startswith("Exited (0)"), f"setup: {setup[1]}"
    assert set(containers) == SERVICES, containers
    for service, (_, status) in containers.items():
        assert status.startswith("Up "), f"{service}: {status}"
        assert "starting" not in status and "unhealthy" not in status, f"{service}: {status}"
    for service in SERVICES - {"certbot", "s3", "smtp", "registry"}:
        assert "(healthy)" in containers[service][1], f"{service}: {containers[service][1]}"

    # Secrets: root's directory, files the containers can read, exactly the values in SSM.
    secrets = target.root / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for name, value in target.secrets.items():
        file = secrets / name.replace("-", "_")
        assert file.read_text() == value + "\n", file
        assert stat.S_IMODE(file.stat().st_mode) == 0o444, file
        assert file.stat().st_uid == 0, file
    assert not (secrets / "runner_token").exists(), "the runner's token is not the stack's"
    assert "aws_access_key_id = e2e-key" in (secrets / "aws_credentials").read_text()
    assert json.loads((secrets / "docker_config.json").read_text()) == {"auths": {}}
    assert (secrets / "age_identity").read_text().startswith("# no age identity")
    # The second copy's keys: empty (no copy), but present, as compose mounts them.
    # So is the heartbeat URL: no heartbeat.
    for name in ["backup_copy_access_key_id", "backup_copy_secret_access_key",
                 "backup_heartbeat_url"]:
        assert (secrets / name).read_text() == "", name
    # The signing key was made on the host (kept on the second run: no change).
    signing_key = secrets / "backup_signing_key"
    assert signing_key.read_text().startswith("-----BEGIN PRIVATE KEY-----"), signing_key
    assert stat.S_IMODE(signing_key.stat().st_mode) == 0o444, signing_key
    env = (target.root / ".env").read_text()
    assert "\nSTEWARD_MAIL_TO=ops@gitea.test\n" in env, env
    assert "\nGITEA_IMAGE=steward-test/app:v1\n" in env, env
    assert "\nSTEWARD_BACKUP_VERIFY_SCHEDULE=0 4 * * 0\n" in env, env
    # The backup service bind-mounts the stack directory (compose's working-directory label),
    # read-only: the container encrypted backups read the project's own files from.
    backup = run(["docker", "inspect", "-f",
                  '{{index .Config.Labels "com.docker.compose.project.working_dir"}}|'
                  "{{range .Mounts}}{{.Type}} {{.Source}}={{.Destination}} {{.RW}};{{end}}",
                  containers["backup"][0]]).stdout
    assert backup.startswith(f"{target.root}|"), backup
    assert f"bind {target.root}=/project false;" in backup, backup

    # The services logged in to NATS with the passwords from SSM: the updater is healthy only
    # when its bus connection is, and the NATS server knows no other passwords.
    nats_log = run(["docker", "logs", containers["nats"][0]])
    assert "Authorization Error" not in nats_log.stdout + nats_log.stderr

    second = target.playbook()
    _, changed, _ = recap(second)
    assert changed == 0, f"the second run changed: {changed_tasks(second)}\n{second.stdout}"
    assert {s: c[0] for s, c in target.containers().items() if s != "setup"} == \
        {s: c[0] for s, c in containers.items()}, "a second run replaced containers"

    # A secret rotated in SSM reaches its file and the containers that read it.
    before = target.containers()
    rotated = uuid.uuid4().hex * 2
    target.put_secret("approval-secret", rotated)
    third = target.playbook()
    _, changed, _ = recap(third)
    assert changed > 0
    assert (target.root / "secrets" / "approval_secret").read_text() == rotated + "\n"
    after = target.containers()
    # Secret files are read when a container starts: the updater must be a new one, healthy.
    assert after["updater"][0] != before["updater"][0]
    assert "(healthy)" in after["updater"][1], after["updater"]


def test_a_secret_missing_in_ssm_stops_the_run_before_anything_starts(target):
    target.ssm.delete_parameter(Name=f"{target.secrets_path}/approval-secret")
    result = target.playbook()
    assert result.returncode != 0
    assert "missing in SSM Parameter Store" in result.stdout, result.stdout
    assert "approval-secret" in result.stdout
    assert target.containers() == {}, "nothing may start without its secrets"


def test_env_keeps_the_image_tags_steward_wrote_back_until_the_inventory_moves(tmp_path):
    """The role's .env tasks alone (no stack): a tag the updater wrote back after an update is
    kept by the next deploy while the inventory still names what the last run wrote; a version
    raised in the inventory wins; deploy_keep_written_images: false writes the inventory's."""
    root = tmp_path / "stack"
    root.mkdir()

    def deploy(env, keep=True):
        result = role_tasks(tmp_path, "env", {
            "deploy_root": str(root), "deploy_env": env, "deploy_env_extra": {},
            "deploy_keep_written_images": keep}, role="deploy")
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        return result.stdout

    def env_file():
        return dict(line.split("=", 1) for line in (root / ".env").read_text().splitlines()
                    if line and not line.startswith("#"))

    inventory = {"GITEA_IMAGE": "gitea/gitea:1.22.6", "POSTGRES_IMAGE": "postgres:15", "X": "1"}
    deploy(inventory)
    assert env_file() == inventory
    # steward-updater writes the newer tag in place (only the value).
    text = (root / ".env").read_text()
    (root / ".env").write_text(text.replace("gitea/gitea:1.22.6", "gitea/gitea:1.22.7"))
    out = deploy(inventory)
    assert env_file()["GITEA_IMAGE"] == "gitea/gitea:1.22.7", "the written-back tag stays"
    assert "GITEA_IMAGE=gitea/gitea:1.22.7 kept" in out
    # A hand edit of another setting is still undone, as before.
    (root / ".env").write_text((root / ".env").read_text().replace("X=1", "X=2"))
    deploy(inventory)
    assert env_file()["X"] == "1"
    assert env_file()["GITEA_IMAGE"] == "gitea/gitea:1.22.7"
    # The operator raises the version in the inventory: the inventory wins.
    raised = {**inventory, "GITEA_IMAGE": "gitea/gitea:1.23.0"}
    deploy(raised)
    assert env_file()["GITEA_IMAGE"] == "gitea/gitea:1.23.0"
    # Turned off: the inventory's value always.
    (root / ".env").write_text((root / ".env").read_text().replace("1.23.0", "1.23.1"))
    deploy(raised, keep=False)
    assert env_file()["GITEA_IMAGE"] == "gitea/gitea:1.23.0"


@pytest.mark.parametrize("memory", ["2g", 0, "-512", ""])
def test_memory_sizing_refuses_a_host_memory_that_is_not_a_whole_number_of_mib(tmp_path, memory):
    """A bad deploy_host_memory_mb stops the run, naming it, before .env is written: read as
    an integer it would be 0 and give every service its floor."""
    root = tmp_path / "stack"
    root.mkdir()
    result = role_tasks(tmp_path, ["limits", "env"], {
        "deploy_root": str(root), "deploy_env": {}, "deploy_env_extra": {},
        "deploy_host_memory_mb": memory}, role="deploy")
    assert result.returncode != 0, result.stdout
    assert "deploy_host_memory_mb must be the host's memory in MiB" in result.stdout, result.stdout
    assert not (root / ".env").exists()


def test_memory_limits_follow_the_hosts_memory_unless_the_inventory_sets_them(tmp_path):
    """The role's limits and .env tasks alone (no stack): the services that grow with the host
    get a share of its memory (from its facts), never less than their floor, and what the
    inventory sets wins; the compose file renders what .env says."""
    root = tmp_path / "stack"
    root.mkdir()
    base = {"GITEA_IMAGE": "gitea/gitea:1.22"}

    def deploy(variables, gather_facts=False):
        result = role_tasks(tmp_path, ["limits", "env"], {
            "deploy_root": str(root), "deploy_env": base, "deploy_env_extra": {},
            **variables}, role="deploy", gather_facts=gather_facts)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        return {k: v for k, v in (line.split("=", 1) for line in
                (root / ".env").read_text().splitlines() if line and not line.startswith("#"))
                if k.endswith("_MEM_LIMIT")}

    # A 2 GiB host: the compose file's own defaults.
    assert deploy({"deploy_host_memory_mb": 2048}) == {
        "POSTGRES_MEM_LIMIT": "1024m", "GITEA_MEM_LIMIT": "1024m",
        "PROMETHEUS_MEM_LIMIT": "1024m", "JAEGER_MEM_LIMIT": "512m"}
    # 512 MiB: the floors, not a share too small to start.
    assert deploy({"deploy_host_memory_mb": 512}) == {
        "POSTGRES_MEM_LIMIT": "256m", "GITEA_MEM_LIMIT": "384m",
        "PROMETHEUS_MEM_LIMIT": "256m", "JAEGER_MEM_LIMIT": "128m"}
    # 8 GiB: four times as much, but the operator's values win (deploy_env, deploy_env_extra).
    assert deploy({"deploy_host_memory_mb": 8192,
                   "deploy_env": {**base, "GITEA_MEM_LIMIT": "1g"},
                   "deploy_env_extra": {"POSTGRES_MEM_LIMIT": "700m"}}) == {
        "POSTGRES_MEM_LIMIT": "700m", "GITEA_MEM_LIMIT": "1g",
        "PROMETHEUS_MEM_LIMIT": "4096m", "JAEGER_MEM_LIMIT": "2048m"}
    # Off: nothing written, the compose file's defaults apply.
    assert deploy({"deploy_mem_sizing": False}) == {}

    # From this machine's facts (ansible_facts.memtotal_mb: MemTotal in MiB, rounded down).
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")))
    half = max((mem_kib // 1024) // 2, 384)
    limits = deploy({}, gather_facts=True)
    assert limits["GITEA_MEM_LIMIT"] == f"{half}m", limits

    # docker-compose hands it to the service as its limit.
    (root / "docker-compose.yml").write_text((REPO / "compose" / "docker-compose.yml").read_text())
    with open(root / ".env", "a") as env:
        env.write("GITEA_DOMAIN=git.example.com\nSTEWARD_S3_BUCKET=b\n"
                  "STEWARD_MAIL_FROM=steward@example.com\nSTEWARD_MAIL_TO=ops@example.com\n")
    config = run(["docker-compose", "--file", "docker-compose.yml", "config"], cwd=root)
    assert config.returncode == 0, config.stderr
    gitea = config.stdout.split("\n  gitea:\n", 1)[1]
    gitea = gitea[:re.search(r"\n  \S", gitea).start()]
    assert f"    mem_limit: {half}m\n" in gitea, gitea
