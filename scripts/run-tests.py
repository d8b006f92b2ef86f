#!/usr/bin/env python3
"""Runs the workspace's test binaries several at a time, the longest first.

`cargo test` runs one test binary after another. Most of ours wait on containers, servers and
timers, so one binary at a time leaves half of the two CPUs idle (the CI log's "CPUs busy"
figure). This runner takes the binaries Cargo just built (its JSON messages on stdin, from
`cargo test --no-run --message-format=json`), runs STEWARD_TEST_JOBS of them at once (default
2), each in its package's directory and with .cargo/config.toml's `[env]` as Cargo would
(the test threads' stack size is set there), and prints each one's output whole when it
ends, in Cargo's format, so a log reads as before. Tests inside one binary still run on the
harness's own threads. Doc tests are not run here (`cargo test --doc` runs them).

The order is longest first (known durations: target/test-times.tsv from the last run on this
machine, else scripts/test-times.tsv), so the longest binary does not start last. Arguments
after the options are passed to every binary (e.g. a test name filter).

The engine matrix (issue 22): the binaries listed in scripts/podman-tests.txt (each with
the harness arguments on its line, e.g. `--skip NAME`) run a second time against Podman's Docker-compatible service (STEWARD_TEST_PODMAN_SOCKET) as DOCKER_HOST,
which the `docker` CLI their set-up runs, the engine client and the services they start all
read. That run is named "[podman] KEY" in the log and "KEY@podman" in the times, so a failure
names the engine. The file's plain lines are the sample CI runs; with
STEWARD_TEST_MATRIX=full its `full:` lines run too (instead of a sample line for the same
binary); STEWARD_TEST_MATRIX=docker runs the Docker leg only, STEWARD_TEST_MATRIX=podman the
full Podman leg only (the listed binaries on Podman, none on Docker). Its `rootless:` lines run
(in both matrices) against the test bed's rootless Podman (STEWARD_TEST_PODMAN_ROOTLESS_SOCKET),
named "[podman-rootless] KEY" and "KEY@rootless".

Servers of their own (issue 24): every binary, on every leg, starts its own NATS, S3, SMTP
and registries in containers (steward-testkit's `servers`, testcontainers), unless
STEWARD_TEST_SERVERS=testbed is set for the run: then all use the shared ones
`infra/testbed/up.sh --servers` started.

Exit: 0 when every binary passed, 101 (as Cargo) when one failed or could not run.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURED = os.path.join(ROOT, "target", "test-times.tsv")
HINTS = os.path.join(ROOT, "scripts", "test-times.tsv")
PODMAN_TESTS = os.path.join(ROOT, "scripts", "podman-tests.txt")


def package_name(package_id):
    # "path+file:///dir/crates/bus#steward-bus@0.1.0", or "...crates/name#0.1.0" when the
    # directory has the package's name.
    source, _, version = package_id.partition("#")
    if "@" in version:
        return version.split("@", 1)[0]
    return source.rstrip("/").rsplit("/", 1)[-1]


def binaries(messages):
    found = []
    for line in messages:
        line = line.strip()
        if not line.startswith("{"):
            continue
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        manifest_dir = os.path.dirname(msg["manifest_path"])
        found.append(
            {
                "key": f"{os.path.relpath(manifest_dir, ROOT)}:{target['kind'][0]}:{target['name']}",
                "package": package_name(msg["package_id"]),
                "kind": target["kind"][0],
                "name": target["name"],
                "src": os.path.relpath(target["src_path"], manifest_dir),
                "exe": msg["executable"],
                "dir": manifest_dir,
            }
        )
    return found


def read_times(path):
    times = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, secs = line.strip().partition("\t")
                try:
                    times[key] = float(secs)
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return times


def config_env(env):
    """The `[env]` table of the workspace's .cargo/config.toml, which Cargo applies to the test
    binaries it runs (e.g. the test threads' stack size): as Cargo does, a variable already set
    wins unless the entry says `force = true`."""
    path = os.path.join(ROOT, ".cargo", "config.toml")
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("env", {})
    except FileNotFoundError:
        return {}
    out = {}
    for name, entry in table.items():
        if isinstance(entry, dict):
            value, force = entry.get("value"), entry.get("force", False)
            if entry.get("relative", False) and value is not None:
                value = os.path.join(ROOT, value)
        else:
            value, force = entry, False
        if value is not None and (force or name not in env):
            out[name] = str(value)
    return out


def podman_leg(found, env):
    """The Podman runs of the binaries scripts/podman-tests.txt lists (a key per line, as in
    the times file; `#` starts a comment). A listed key that names no binary is an error: the
    matrix must not shrink silently when a test file is renamed."""
    matrix = env.get("STEWARD_TEST_MATRIX", "sample")
    if matrix == "docker":
        return []
    if matrix not in ("sample", "full", "podman"):
        sys.exit(f"STEWARD_TEST_MATRIX={matrix!r}: expected sample (the default), full, docker "
                 "or podman")
    socket = env.get("STEWARD_TEST_PODMAN_SOCKET")
    if not socket:
        sys.exit("the Podman leg needs STEWARD_TEST_PODMAN_SOCKET (infra/testbed/up.sh sets it; "
                 "STEWARD_TEST_MATRIX=docker runs the Docker leg only)")
    sample, full, rootless = [], [], []
    with open(PODMAN_TESTS) as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if words[0] == "full:":
                full.append((words[1], words[2:]))
            elif words[0] == "rootless:":
                rootless.append((words[1], words[2:]))
            else:
                sample.append((words[0], words[1:]))
    rootless_socket = env.get("STEWARD_TEST_PODMAN_ROOTLESS_SOCKET")
    if rootless and not rootless_socket:
        sys.exit("the rootless Podman leg needs STEWARD_TEST_PODMAN_ROOTLESS_SOCKET "
                 "(infra/testbed/up.sh sets it)")
    wanted = sample
    if matrix in ("full", "podman"):
        # A binary on a `full:` line runs as that line says, instead of its sample's line.
        whole = {k for k, _ in full}
        wanted = [w for w in sample if w[0] not in whole] + full
    by_key = {b["key"]: b for b in found}
    # A key of a package that was built but names none of its binaries is an error (a test
    # file renamed); keys of packages not built this run (a partial run) are left out.
    built = {b["key"].split(":", 1)[0] for b in found}
    missing = [k for k, _ in wanted + rootless if k not in by_key and k.split(":", 1)[0] in built]
    if missing:
        sys.exit(f"scripts/podman-tests.txt names no test binary: {', '.join(missing)}")
    leg = []
    runs = [(k, a, "podman", "podman", socket) for k, a in wanted]
    runs += [(k, a, "rootless", "podman-rootless", rootless_socket) for k, a in rootless]
    for key, args, suffix, engine, at in runs:
        if key not in by_key:
            continue
        b = dict(by_key[key])
        b["key"] = f"{key}@{suffix}"
        b["engine"] = engine
        b["args"] = args
        b["env"] = {"DOCKER_HOST": f"unix://{at}", "STEWARD_TEST_ENGINE": "podman"}
        leg.append(b)
    return leg


def cargo_args(b):
    # How Cargo names a target in "to rerun pass ...".
    if b.get("engine") in ("podman", "podman-rootless"):
        args = " ".join(["--", *b["args"]]) if b.get("args") else ""
        socket = {"podman": "$STEWARD_TEST_PODMAN_SOCKET",
                  "podman-rootless": "$STEWARD_TEST_PODMAN_ROOTLESS_SOCKET"}[b["engine"]]
        return (f"DOCKER_HOST=unix://{socket} STEWARD_TEST_ENGINE=podman "
                f"cargo test -p {b['package']} --{b['kind']} {b['name']} {args}").rstrip()
    if b["kind"] == "lib":
        return f"-p {b['package']} --lib"
    if b["kind"] == "bin":
        return f"-p {b['package']} --bin {b['name']}"
    return f"-p {b['package']} --{b['kind']} {b['name']}"


def main():
    jobs = int(os.environ.get("STEWARD_TEST_JOBS", "2"))
    if jobs < 1:
        sys.exit("STEWARD_TEST_JOBS must be at least 1")
    passthrough = sys.argv[1:]
    todo = binaries(sys.stdin)
    if not todo:
        sys.exit("no test binaries in Cargo's messages (was it `cargo test --no-run --message-format=json`?)")
    env = dict(os.environ)
    env.setdefault("CARGO", "cargo")
    env.update(config_env(env))
    leg = podman_leg(todo, env)
    todo = leg if env.get("STEWARD_TEST_MATRIX") == "podman" else todo + leg
    times = read_times(HINTS)
    times.update(read_times(MEASURED))
    # Unknown binaries count as 10 s: the list holds every binary of 20 s or more.
    todo.sort(key=lambda b: -times.get(b["key"], 10.0))
    running = {}  # pid -> (binary, Popen, output file, start)
    failed = []
    took = {}

    def stop(signum, _frame):
        for _, proc, _, _ in running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    while todo or running:
        while todo and len(running) < jobs:
            # One binary at a time per Podman service: they share its images (whose name list
            # Podman 4.3 updates without a lock), and the Docker leg keeps the other CPU busy.
            busy = {r[0].get("engine") for r in running.values()}
            pick = next((i for i, c in enumerate(todo)
                         if not (c.get("engine") and c.get("engine") in busy)), None)
            if pick is None:
                break
            b = todo.pop(pick)
            out = tempfile.TemporaryFile()
            run_env = dict(env, **b.get("env", {}))
            run_env["CARGO_MANIFEST_DIR"] = b["dir"]
            run_env["CARGO_PKG_NAME"] = b["package"]
            try:
                # A session of its own: a stop reaches the binary's children (servers it runs).
                proc = subprocess.Popen(
                    [b["exe"], *b.get("args", []), *passthrough],
                    cwd=b["dir"],
                    env=run_env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                print(f"     Running {b['src']} ({b['exe']}): cannot start: {e}", flush=True)
                failed.append(b)
                continue
            running[proc.pid] = (b, proc, out, time.monotonic())
        pid, status = os.wait()
        if pid not in running:
            continue
        b, proc, out, start = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        took[b["key"]] = time.monotonic() - start
        out.seek(0)
        engine = f"[{b['engine']}] " if b.get("engine") else ""
        sys.stdout.write(f"     Running {engine}{b['src']} ({os.path.relpath(b['exe'], ROOT)})\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(out.read())
        out.close()
        # Wall-clock times too: a leftover container or volume has a creation time to match.
        began = time.strftime("%H:%M:%S", time.gmtime(time.time() - took[b["key"]]))
        print(
            f"[test-binary] {b['key']}: {took[b['key']]:.0f} s (from {began} UTC), "
            f"exit {proc.returncode}",
            flush=True,
        )
        if proc.returncode != 0:
            if b.get("engine"):
                print(f"error: test failed on {b['engine']}, to rerun: `{cargo_args(b)}`",
                      flush=True)
            else:
                print(f"error: test failed, to rerun pass `{cargo_args(b)}`", flush=True)
            failed.append(b)

    os.makedirs(os.path.dirname(MEASURED), exist_ok=True)
    merged = read_times(MEASURED)
    merged.update(took)
    with open(MEASURED, "w") as f:
        for key, secs in sorted(merged.items(), key=lambda kv: -kv[1]):
            f.write(f"{key}\t{secs:.0f}\n")
    print("the longest test binaries of this run:")
    for key, secs in sorted(took.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {secs:6.0f} s  {key}")
    if failed:
        print(f"error: {len(failed)} target{'s' if len(failed) > 1 else ''} failed:")
        for b in failed:
            print(f"    `{cargo_args(b)}`")
        sys.exit(101)


if __name__ == "__main__":
    main()
