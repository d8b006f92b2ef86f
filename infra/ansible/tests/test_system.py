"""The system role's files for the seed 003 host (Podman, firewalld), run for real: the role's
file tasks (`tasks_from`) with `--connection=local`, every path pointed at a throw-away
directory, then the result read back by firewalld's own tool (`firewall-offline-cmd
--system-config`, which reads and writes only the directory it is given; no firewalld runs) and
by systemd's parsers. This machine's /etc/firewalld, firewall and units are never touched: the
test checks that too.

firewall-offline-cmd: from $STEWARD_FIREWALLD_ROOT (the firewalld package unpacked, not
installed: infra/check.sh), else the installed one.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest

from roletasks import role_tasks, run

REPO = Path(__file__).resolve().parents[3]
FIREWALLD_ROOT = Path(os.environ.get("STEWARD_FIREWALLD_ROOT", "/"))
OFFLINE_CMD = FIREWALLD_ROOT / "usr" / "bin" / "firewall-offline-cmd"
DEFAULT_CONFIG = FIREWALLD_ROOT / "usr" / "lib" / "firewalld"


def tree_digest(path: Path) -> str:
    """One digest of every file's path and content under `path` (empty when absent)."""
    h = hashlib.sha256()
    if path.exists():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def ok(result):
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def offline():
    if not OFFLINE_CMD.exists():
        pytest.fail(f"{OFFLINE_CMD} missing: run infra/check.sh (it unpacks firewalld's package "
                    "into $STEWARD_INFRA_TOOLS) or set STEWARD_FIREWALLD_ROOT")

    def query(config: Path, *args):
        out = run([str(OFFLINE_CMD), f"--system-config={config}",
                   f"--default-config={DEFAULT_CONFIG}", *args])
        # --query-* answers "no" with exit code 1.
        assert out.returncode == 0 or out.stdout.strip() == "no", \
            f"firewall-offline-cmd {args}: {out.stdout}{out.stderr}"
        return out.stdout.strip()
    return query


def firewalld_vars(config: Path, networks):
    return {"system_firewalld_dir": str(config), "system_trusted_networks": networks,
            "system_firewalld_default_dir": str(DEFAULT_CONFIG),
            "system_firewall_offline_cmd": str(OFFLINE_CMD), "system_firewall": "firewalld"}


def test_firewalld_public_zone_lets_in_80_443_ssh_only_from_trusted_and_logs_the_rest(
        tmp_path, offline):
    machine = tree_digest(Path("/etc/firewalld"))
    config = tmp_path / "firewalld"
    # A cloud image's leftovers: ssh and cockpit open to everyone in the public zone.
    (config / "zones").mkdir(parents=True)
    (config / "zones" / "public.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<zone><short>Public</short>'
        '<service name="ssh"/><service name="cockpit"/><port port="3000" protocol="tcp"/></zone>\n')
    networks = ["203.0.113.0/24", "2001:db8:1::/48"]
    first = ok(role_tasks(tmp_path, "firewalld_files", firewalld_vars(config, networks)))
    assert "changed=" in first

    # firewalld's reading of what the role wrote.
    assert offline(config, "--get-default-zone") == "public"
    assert offline(config, "--get-log-denied") == "all"
    # DHCPv6 stays open: a host whose IPv6 address comes by DHCPv6 keeps its lease.
    assert offline(config, "--zone=public", "--list-services") == "dhcpv6-client"
    assert sorted(offline(config, "--zone=public", "--list-ports").split()) == ["443/tcp", "80/tcp"]
    assert offline(config, "--zone=public", "--get-target") == "default"
    rules = offline(config, "--zone=public", "--list-rich-rules").splitlines()
    assert sorted(rules) == sorted([
        'rule family="ipv4" source address="203.0.113.0/24" port port="22" protocol="tcp" accept',
        'rule family="ipv6" source address="2001:db8:1::/48" port port="22" protocol="tcp" accept',
    ]), rules
    for port in ["22", "2222", "3000", "3100", "3200", "5432", "9100", "4222", "8222"]:
        assert offline(config, "--zone=public", f"--query-port={port}/tcp") == "no", port
    for service in ["ssh", "cockpit", "postgresql"]:
        assert offline(config, "--zone=public", f"--query-service={service}") == "no", service
    assert offline(config, "--zone=public", "--query-port=443/tcp") == "yes"

    # A second run changes nothing; this machine's firewalld configuration is as it was.
    again = ok(role_tasks(tmp_path, "firewalld_files", firewalld_vars(config, networks)))
    assert "changed=0" in again, again
    assert tree_digest(Path("/etc/firewalld")) == machine, "the machine's /etc/firewalld changed"
    assert run(["pgrep", "-x", "firewalld"]).returncode != 0, "a firewalld runs on this machine"


def test_firewalld_opens_sshs_own_port_for_the_trusted_networks(tmp_path, offline):
    """sshd on another port than 22: the port Ansible connects to (ansible_port) is the one the
    zone opens, unless system_ssh_port says otherwise; dhcpv6-client can be closed."""
    config = tmp_path / "firewalld"
    variables = {**firewalld_vars(config, ["203.0.113.0/24"]), "ansible_port": 2200}
    ok(role_tasks(tmp_path, "firewalld_files", variables))
    assert offline(config, "--zone=public", "--list-rich-rules").splitlines() == [
        'rule family="ipv4" source address="203.0.113.0/24" port port="2200" protocol="tcp" accept']
    assert offline(config, "--zone=public", "--query-port=22/tcp") == "no"

    ok(role_tasks(tmp_path, "firewalld_files", {**variables, "system_ssh_port": 2022,
                                                 "system_firewalld_public_services": []}))
    assert offline(config, "--zone=public", "--list-rich-rules").splitlines() == [
        'rule family="ipv4" source address="203.0.113.0/24" port port="2022" protocol="tcp" accept']
    assert offline(config, "--zone=public", "--list-services") == ""


def test_ssh_port_is_the_one_sshd_accepted_the_login_on_not_the_one_ansible_dials(
        tmp_path, offline):
    """Behind a port forward (Ansible dials 2222, sshd listens on 22) the zone opens 22, the
    port in the login's SSH_CONNECTION, not ansible_port; a system_ssh_port set by hand that is
    not that port stops the run before anything is written (unless the check is off)."""
    config = tmp_path / "firewalld"
    login = {"SSH_CONNECTION": "203.0.113.9 50122 192.0.2.10 22"}
    variables = {**firewalld_vars(config, ["203.0.113.0/24"]), "ansible_port": 2222}
    ok(role_tasks(tmp_path, ["ssh_connection", "firewalld_files"], variables, env=login))
    assert offline(config, "--zone=public", "--list-rich-rules").splitlines() == [
        'rule family="ipv4" source address="203.0.113.0/24" port port="22" protocol="tcp" accept']

    other = tmp_path / "other"
    wrong = {**variables, "system_firewalld_dir": str(other), "system_ssh_port": 2022}
    refused = role_tasks(tmp_path, ["ssh_connection", "firewalld_files"], wrong, env=login)
    assert refused.returncode != 0
    assert "system_ssh_port is 2022 but this login came in on sshd's port 22" in refused.stdout, \
        refused.stdout
    assert not other.exists(), "nothing may be written after a refused check"

    # Check off (sshd listens on both): the port set by hand is the one opened.
    ok(role_tasks(tmp_path, ["ssh_connection", "firewalld_files"],
                  {**wrong, "system_firewalld_lockout_check": False}, env=login))
    assert offline(other, "--zone=public", "--list-rich-rules").splitlines() == [
        'rule family="ipv4" source address="203.0.113.0/24" port port="2022" protocol="tcp" accept']


def test_firewalld_refuses_an_interface_or_source_bound_to_another_zone(tmp_path, offline):
    """An interface in another zone (a cloud image's `internal`) would never meet the public
    zone's rules: the run stops before anything is written, naming it, unless it is listed in
    system_firewalld_other_zone_bindings."""
    config = tmp_path / "firewalld"
    (config / "zones").mkdir(parents=True)
    internal = ('<?xml version="1.0" encoding="utf-8"?>\n<zone><short>Internal</short>'
                '<interface name="eth1"/><service name="ssh"/></zone>\n')
    (config / "zones" / "internal.xml").write_text(internal)
    (config / "zones" / "trusted.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<zone target="ACCEPT"><short>Trusted</short>'
        '<source address="198.51.100.0/24"/></zone>\n')
    # Docker's own zone, with its bridge: the engine's, left alone.
    (config / "zones" / "docker.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<zone target="ACCEPT"><short>docker</short>'
        '<interface name="docker0"/></zone>\n')
    assert offline(config, "--get-zone-of-interface=eth1") == "internal"
    variables = firewalld_vars(config, ["203.0.113.0/24"])

    result = role_tasks(tmp_path, "firewalld_files", variables)
    assert result.returncode != 0, result.stdout
    assert "bound to another zone than public" in result.stdout, result.stdout
    assert "internal: eth1, trusted: 198.51.100.0/24;" in result.stdout, result.stdout
    assert "docker0" not in result.stdout.split("bound to another zone")[1].split("\n")[0]
    assert not (config / "zones" / "public.xml").exists(), "nothing may be written after it"
    assert not (config / "firewalld.conf").exists()

    # Listed as meant to be there: the run goes on; those zones are left as they were.
    ok(role_tasks(tmp_path, "firewalld_files", {
        **variables, "system_firewalld_other_zone_bindings": ["eth1", "198.51.100.0/24"]}))
    assert offline(config, "--get-default-zone") == "public"
    assert (config / "zones" / "internal.xml").read_text() == internal


def test_firewalld_running_zones_allow_podmans_subnets_in_trusted_but_nothing_else(tmp_path):
    """The running firewalld's listing (`firewall-cmd --list-all-zones`, zones marked
    `(active)`), as firewalld.yml checks it: the subnet Podman's network backend put in the
    trusted zone is the engine's; an interface a NetworkManager profile put in `work` is not."""
    def listing(zone_lines):
        return [line for zone, interfaces, sources in zone_lines for line in [
            f"{zone} (active)", "  target: default", f"  interfaces: {interfaces}",
            f"  sources: {sources}", "  services: ", ""]]

    variables = {"system_firewalld_zones_source": "running firewalld",
                 "system_firewalld_other_zone_bindings": [],
                 "system_firewalld_engine_bindings": ["10.88.0.0/16", "10.89.0.0/24"]}
    ok(role_tasks(tmp_path, "firewalld_zones", {**variables, "system_firewalld_zones_listing":
        listing([("public", "eth0", ""), ("trusted", "", "10.88.0.0/16 10.89.0.0/24")])}))
    nm_bound = listing([("public", "eth0", ""), ("trusted", "", "10.88.0.0/16"),
                        ("work", "eth1", "")])
    refused = role_tasks(tmp_path, "firewalld_zones",
                         {**variables, "system_firewalld_zones_listing": nm_bound})
    assert refused.returncode != 0
    assert "(running firewalld): work: eth1;" in refused.stdout, refused.stdout


def test_firewalld_running_zones_accept_only_the_engines_own_bindings(tmp_path):
    """Only what the engines put there passes: in `trusted`, Podman's private or ULA subnets
    of prefix /8 or longer and addresses inside them (CNI's per-container entries); in `docker`,
    docker0 and br-<12 hex> interfaces. The same subnet in another zone, a public or too wide
    "engine" subnet, another interface or any source in `docker` stop the run."""
    def listing(zone_lines):
        return [line for zone, interfaces, sources in zone_lines for line in [
            f"{zone} (active)", "  target: default", f"  interfaces: {interfaces}",
            f"  sources: {sources}", "  services: ", ""]]

    engine = ["10.88.0.0/16", "fd00:88::/64", "203.0.113.0/24", "fc00::/7"]
    variables = {"system_firewalld_zones_source": "running firewalld",
                 "system_firewalld_other_zone_bindings": [],
                 "system_firewalld_engine_bindings": engine}
    ok(role_tasks(tmp_path, "firewalld_zones", {**variables, "system_firewalld_zones_listing":
        listing([("public", "eth0", ""),
                 ("trusted", "", "10.88.0.0/16 fd00:88::/64 10.88.0.5/32 10.88.0.6"),
                 ("docker", "docker0 br-0123456789ab", "")])}))
    refused = role_tasks(tmp_path, "firewalld_zones", {**variables, "system_firewalld_zones_listing":
        listing([("public", "eth0", ""),
                 ("trusted", "", "203.0.113.0/24 fc00::/7 10.89.0.0/24"),
                 ("work", "", "10.88.0.0/16"),
                 ("docker", "eth1 br-0123 docker0", "10.88.0.0/16")])})
    assert refused.returncode != 0
    assert ("(running firewalld): trusted: 203.0.113.0/24, trusted: fc00::/7, "
            "trusted: 10.89.0.0/24, work: 10.88.0.0/16, docker: eth1, docker: br-0123, "
            "docker: 10.88.0.0/16;") in refused.stdout, refused.stdout


@pytest.mark.parametrize("networks,message", [
    ([], "system_trusted_networks is empty"),
    (["0.0.0.0/0"], "is the whole internet"),
    (["::/0"], "is the whole internet"),
    (["10.0.0.0/8", "not-a-net"], "'not-a-net' is not a network"),
])
def test_firewalld_refuses_trusted_networks_that_would_lock_out_or_open_ssh(
        tmp_path, networks, message):
    config = tmp_path / "firewalld"
    variables = {**firewalld_vars(config, networks), "system_firewalld_lockout_check": False}
    # firewalld.yml checks first: the files are never written.
    result = role_tasks(tmp_path, "firewalld", variables)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout
    assert not config.exists(), "nothing may be written after a refused check"


def test_firewalld_refuses_a_run_from_outside_the_trusted_networks(tmp_path):
    config = tmp_path / "firewalld"
    variables = {**firewalld_vars(config, ["203.0.113.0/24"]),
                 "system_ssh_client": "198.51.100.7"}
    result = role_tasks(tmp_path, "firewalld", variables)
    assert result.returncode != 0
    assert "this connection comes from 198.51.100.7" in result.stdout, result.stdout
    assert not config.exists()


def test_journal_and_container_logs_are_bounded_for_each_engine(tmp_path):
    dirs = {"system_journald_dir": str(tmp_path / "journald.conf.d"),
            "system_docker_dir": str(tmp_path / "docker"),
            "system_containers_dir": str(tmp_path / "containers")}
    ok(role_tasks(tmp_path, "logs_files", {**dirs, "system_engine": "podman"}))
    journald = (tmp_path / "journald.conf.d" / "50-steward.conf").read_text()
    for line in ["[Journal]", "SystemMaxUse=1G", "SystemMaxFileSize=64M", "MaxRetentionSec=1month"]:
        assert line in journald.splitlines(), journald
    podman = (tmp_path / "containers" / "containers.conf.d" / "50-steward.conf").read_text()
    assert '[containers]' in podman and 'log_driver = "journald"' in podman, podman
    assert not (tmp_path / "docker").exists(), "a Podman host gets no daemon.json"

    docker_dirs = {k: v + "-d" for k, v in dirs.items()}
    ok(role_tasks(tmp_path, "logs_files", {**docker_dirs, "system_engine": "docker",
                                             "system_docker_log_max_size": "20m"}))
    daemon = json.loads((tmp_path / "docker-d" / "daemon.json").read_text())
    assert daemon == {"log-driver": "json-file", "log-opts": {"max-size": "20m", "max-file": "5"},
                      "live-restore": True}, daemon
    assert not (tmp_path / "containers-d").exists()


def test_podman_socket_is_the_engine_groups_clients_find_it_bridges_keep_addresses(tmp_path):
    (tmp_path / "profile.d").mkdir()
    (tmp_path / "sbin").mkdir()
    ok(role_tasks(tmp_path, "podman_files", {
        "system_engine": "podman", "system_systemd_dir": str(tmp_path / "systemd"),
        "system_profile_dir": str(tmp_path / "profile.d"),
        "system_sbin_dir": str(tmp_path / "sbin")}))
    dropin = (tmp_path / "systemd" / "podman.socket.d" / "steward.conf").read_text()
    for line in ["[Socket]", "SocketGroup=podman", "SocketMode=0660"]:
        assert line in dropin.splitlines(), dropin
    profile = (tmp_path / "profile.d" / "steward-engine.sh").read_text()
    assert "export DOCKER_HOST=unix:///run/podman/podman.sock" in profile.splitlines(), profile
    # The unit with the drop-in, as systemd reads them: no unknown keys, no errors.
    unit = tmp_path / "systemd" / "podman.socket"
    unit.write_text(Path("/lib/systemd/system/podman.socket").read_text()
                    if Path("/lib/systemd/system/podman.socket").exists()
                    else "[Socket]\nListenStream=%t/podman/podman.sock\n")
    verify = run(["systemd-analyze", "verify", "--man=no", str(unit)])
    assert "Unknown key" not in verify.stderr, verify.stderr
    # The bridges' addresses: the test bed's own keeper (infra/testbed/up.sh runs this file),
    # installed executable, and its unit as systemd reads it.
    keeper = tmp_path / "sbin" / "steward-pin-bridges"
    shipped = REPO / "infra" / "ansible" / "roles" / "system" / "files" / "steward-pin-bridges"
    assert keeper.read_bytes() == shipped.read_bytes()
    assert keeper.stat().st_mode & 0o777 == 0o755
    unit = tmp_path / "systemd" / "steward-pin-bridges.service"
    assert f"ExecStart={keeper}" in unit.read_text().splitlines(), unit.read_text()
    verify = run(["systemd-analyze", "verify", "--man=no", str(unit)])
    assert "Unknown key" not in verify.stderr and "Failed" not in verify.stderr, verify.stderr


COMPOSE = REPO / "compose"


def stack_dir(tmp: Path, env: dict) -> Path:
    """A stack directory as the deploy role writes it: the compose files and a .env."""
    root = tmp / "stack"
    root.mkdir()
    for name in ["docker-compose.yml", "podman.yml", "selinux.yml"]:
        (root / name).write_text((COMPOSE / name).read_text())
    base = {"GITEA_DOMAIN": "git.example.com", "STEWARD_S3_BUCKET": "b",
            "STEWARD_MAIL_FROM": "steward@example.com", "STEWARD_MAIL_TO": "ops@example.com"}
    (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in {**base, **env}.items()))
    return root


def compose_argv(podman=False, selinux=False):
    return ((["/usr/bin/env", "DOCKER_HOST=unix:///run/podman/podman.sock"] if podman else [])
            + ["docker-compose", "--project-name", "gitea", "--file", "docker-compose.yml"]
            + (["--file=podman.yml"] if podman else [])
            + (["--file=selinux.yml"] if selinux else []))


@pytest.mark.parametrize("env,exposed", [
    ({"GITEA_SSH_ADDR": "127.0.0.1"}, None),
    ({}, None),  # the compose file's own default: loopback
    ({"GITEA_SSH_ADDR": "0.0.0.0"}, "gitea 0.0.0.0:2222"),
    ({"GRAFANA_ADDR": "0.0.0.0", "GITEA_SSH_ADDR": "127.0.0.1"}, "grafana 0.0.0.0:3001"),
    ({"HTTP_PORT": "8080"}, "nginx 0.0.0.0:8080"),
])
def test_deploy_behind_firewalld_refuses_a_port_published_past_it(tmp_path, env, exposed):
    root = stack_dir(tmp_path, env)
    result = role_tasks(tmp_path, "exposure", {
        "deploy_root": str(root), "deploy_compose": compose_argv(podman=True, selinux=True),
        "deploy_public_ports": [80, 443]}, role="deploy")
    if exposed is None:
        ok(result)
    else:
        assert result.returncode != 0, result.stdout
        assert "published beyond loopback, past firewalld" in result.stdout, result.stdout
        assert exposed in result.stdout, result.stdout


def test_podman_stack_unit_brings_the_stack_up_at_boot_against_podmans_socket(tmp_path):
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    ok(role_tasks(tmp_path, "boot_files", {
        "deploy_root": "/opt/gitea", "deploy_project": "gitea", "deploy_wait_seconds": 300,
        "deploy_systemd_dir": str(systemd), "deploy_compose": compose_argv(podman=True)},
        role="deploy"))
    unit = (systemd / "gitea-stack.service").read_text()
    lines = unit.splitlines()
    for line in ["Wants=podman.socket", "After=podman.socket network-online.target",
                 "Type=oneshot", "RemainAfterExit=true", "WorkingDirectory=/opt/gitea",
                 "WantedBy=multi-user.target",
                 "ExecStart=/usr/bin/env DOCKER_HOST=unix:///run/podman/podman.sock docker-compose "
                 "--project-name gitea --file docker-compose.yml --file=podman.yml up --detach "
                 "--no-recreate",
                 "ExecStop=/usr/bin/env DOCKER_HOST=unix:///run/podman/podman.sock docker-compose "
                 "--project-name gitea --file docker-compose.yml --file=podman.yml stop"]:
        assert line in lines, f"{line!r} not in\n{unit}"
    # systemd's own reading of it: no unknown key or bad value (a missing podman.socket unit
    # on this machine is not the file's fault).
    verify = run(["systemd-analyze", "verify", "--man=no", str(systemd / "gitea-stack.service")])
    problems = [line for line in verify.stderr.splitlines()
                if "podman.socket" not in line and "network-online" not in line]
    assert not problems, verify.stderr
