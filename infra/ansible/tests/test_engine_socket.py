"""The stack's socket proxy keeps reaching the engine after the engine's socket is recreated
(seed 003 review): the compose files mount the socket's directory, not the socket file, so a
new socket made there (`systemctl restart podman.socket`, dockerd restarted without systemd's
socket) is the one the proxy connects to next. A file mount would keep the inode it found at
`up`, a dead socket from then on.

Run for real: a Podman API service (`podman system service`) on a socket in a temporary
directory, the socket proxy of `compose/docker-compose.yml` + `compose/podman.yml` started by
docker-compose on the test bed's Docker engine with that directory as ENGINE_SOCKET_DIR, a ping
through the watcher's socket, the Podman service stopped and started again (a new socket, a new
inode, as systemd's socket unit makes one), and a ping again. Needs the test bed's Docker
engine, docker-compose, podman and the image `steward-local/steward:debug`
(`infra/testbed/stack-images.sh steward debug`).
"""

import grp
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from roletasks import run

REPO = Path(__file__).resolve().parents[3]
IMAGE = "steward-local/steward:debug"
TESTBED = Path(os.environ.get("STEWARD_TESTBED_DIR", "/var/tmp/steward-testbed"))


def ping(path: Path) -> str:
    """GET /_ping on the Unix socket at `path`: the answer's status line and body, or the
    error."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        return head.splitlines()[0] + " " + body.strip()
    except OSError as e:
        return f"error: {e}"


class PodmanService:
    """`podman system service` on `socket_path`, its socket given `gid` and mode 0660 as the
    role's podman.socket drop-in does."""

    def __init__(self, socket_path: Path, gid: int, log: Path):
        self.path, self.gid, self.log = socket_path, gid, log
        self.proc = None

    def start(self):
        env = dict(os.environ)
        for name, var in [("containers.conf", "CONTAINERS_CONF"),
                          ("registries.conf", "CONTAINERS_REGISTRIES_CONF")]:
            if (TESTBED / "podman" / name).exists():
                env[var] = str(TESTBED / "podman" / name)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                ["podman", "system", "service", "--time=0", f"unix://{self.path}"],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while not ping(self.path).startswith("HTTP/1.1 200"):
            assert self.proc.poll() is None, f"podman system service exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"no answer on {self.path}: {self.log.read_text()}"
            time.sleep(0.2)
        os.chown(self.path, 0, self.gid)
        os.chmod(self.path, 0o660)
        return os.stat(self.path).st_ino

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # A socket unit's restart unlinks the old socket and binds a new one.
        self.path.unlink(missing_ok=True)


@pytest.fixture
def engine_dir():
    for tool in ["docker", "docker-compose", "podman"]:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: run infra/testbed/up.sh")
    if run(["docker", "image", "inspect", IMAGE]).returncode != 0:
        pytest.fail(f"image {IMAGE} missing: run infra/testbed/stack-images.sh steward debug")
    # Short: a Unix socket's path has at most 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="steward-engine-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_socket_proxy_reaches_podman_again_after_its_socket_is_recreated(engine_dir, tmp_path):
    # Any group but root's works; the proxy (user 10001) joins it through DOCKER_GID.
    gid = grp.getgrnam("docker").gr_gid if "docker" in [g.gr_name for g in grp.getgrall()] else 999
    podman = PodmanService(engine_dir / "podman.sock", gid, tmp_path / "podman.log")
    stack = tmp_path / "stack"
    stack.mkdir()
    for name in ["docker-compose.yml", "podman.yml"]:
        shutil.copy(REPO / "compose" / name, stack / name)
    (stack / ".env").write_text(
        f"ENGINE_SOCKET_DIR={engine_dir}\nENGINE_SOCKET_NAME=podman.sock\nDOCKER_GID={gid}\n"
        f"STEWARD_IMAGE={IMAGE}\nGITEA_DOMAIN=git.example.com\nSTEWARD_S3_BUCKET=b\n"
        "STEWARD_MAIL_FROM=steward@example.com\nSTEWARD_MAIL_TO=ops@example.com\n")
    project = "enginesock" + uuid.uuid4().hex[:10]
    compose = ["docker-compose", "--project-name", project, "--file", "docker-compose.yml",
               "--file", "podman.yml"]
    try:
        first = podman.start()
        up = run(compose + ["up", "--detach", "--no-deps", "sockproxy"], cwd=stack)
        assert up.returncode == 0, up.stderr
        container = run(compose + ["ps", "--quiet", "sockproxy"], cwd=stack).stdout.strip()
        mountpoint = run(["docker", "volume", "inspect", "--format", "{{.Mountpoint}}",
                          f"{project}_docker-watcher"]).stdout.strip()
        watcher = Path(mountpoint) / "docker.sock"

        def health():
            return run(["docker", "inspect", "--format", "{{.State.Health.Status}}",
                        container]).stdout.strip()

        deadline = time.monotonic() + 60
        while health() != "healthy":
            assert time.monotonic() < deadline, (
                f"sockproxy {health()}: {run(['docker', 'logs', container]).stderr}")
            time.sleep(0.5)
        assert ping(watcher) == "HTTP/1.1 200 OK OK", ping(watcher)

        # The engine's socket recreated: stopped (gone), then a new one in the same place. A
        # hard link keeps the old inode alive, as a file bind mount would; otherwise the file
        # system may hand its freed number to the new socket and the check below means nothing.
        os.link(engine_dir / "podman.sock", engine_dir / "previous.sock")
        podman.stop()
        assert not (engine_dir / "podman.sock").exists()
        assert ping(watcher).startswith("HTTP/1.1 502"), ping(watcher)
        second = podman.start()
        assert second != first, "the socket was not recreated (same inode)"
        assert ping(watcher) == "HTTP/1.1 200 OK OK", (
            f"the proxy lost the engine after its socket was recreated: {ping(watcher)}")
    finally:
        run(compose + ["down", "--volumes", "--timeout", "5"], cwd=stack)
        podman.stop()
    assert run(["docker", "ps", "--all", "--quiet", "--filter",
                f"label=com.docker.compose.project={project}"]).stdout.strip() == ""
