"""One role's task file run on this machine (`ansible-playbook --connection=local`), shared by
the role tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

ANSIBLE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


def role_tasks(tmp: Path, tasks_from, variables: dict, role="system", gather_facts=False,
               env=None):
    """Runs `role`'s `tasks_from` (a task file's name, or several run in turn) with `variables`
    on this machine; the completed process. gather_facts: this machine's facts, as a play
    against a host has them. env: variables the tasks' commands see (SSH_CONNECTION, as a
    login over SSH has it)."""
    files = [tasks_from] if isinstance(tasks_from, str) else list(tasks_from)
    play = tmp / f"{'-'.join(files)}.json"
    play.write_text(json.dumps([{
        "hosts": "localhost",
        "gather_facts": gather_facts,
        "vars": variables,
        "tasks": [{"ansible.builtin.include_role": {"name": role, "tasks_from": name}}
                  for name in files],
    }]))
    inventory = tmp / "inventory.ini"
    inventory.write_text(f"localhost ansible_python_interpreter={sys.executable}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-tmp"),
           "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    return run([str(BIN / "ansible-playbook"), "--connection=local", "--inventory",
                str(inventory), str(play)], cwd=ANSIBLE, env=env)
