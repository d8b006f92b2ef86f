#!/usr/bin/env python3
"""benches/scale.sh's observer on its private nats-server (nats-py; the bench's own `probe`
user, allowed everything, which no installation has).

  scale_probe.py watch URL LOG SECONDS   every message the server routes (core `>`), one line
                                         each: receive time, subject, payload bytes, and for a
                                         Steward event its publish->delivery latency (receive
                                         time minus the event's `time`); stops after SECONDS
                                         or on SIGTERM.
  scale_probe.py state URL               the stream's and each KV bucket's messages and bytes,
                                         the stream's messages per subject; one JSON line.
  scale_probe.py summary LOG FROM TO     the messages of lines FROM..TO of LOG by subject (host
                                         and key tokens folded), as JSON.
  scale_probe.py latency LOG FROM TO REGEX KIND  p50/p99/max latency (ms) of the events whose
                                         subject matches REGEX in lines FROM..TO, of KIND (a
                                         regex: `pub` a publish, `dlv:<consumer>` a delivery).
"""
import asyncio
import json
import re
import signal
import sys
import time


def event_time(payload):
    """An event's `time` as epoch seconds, or None (not an event)."""
    try:
        t = json.loads(payload)["time"]
    except Exception:  # not JSON, or no time: not an event
        return None
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", t)
    if not m:
        return None
    from datetime import datetime, timezone
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    if m.group(3) not in ("Z", "+00:00"):
        return None
    frac = float(m.group(2) or 0)
    return base.replace(tzinfo=timezone.utc).timestamp() + frac


async def watch(url, log, seconds):
    import nats
    nc = await nats.connect(url, user="probe", password="probe", max_reconnect_attempts=0)
    out = open(log, "a", buffering=1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def on_msg(msg):
        now = time.time()
        lat = ""
        if not msg.subject.startswith(("$", "_INBOX")) and msg.data[:1] == b"{":
            t = event_time(msg.data)
            if t is not None:
                lat = "%.6f" % ((now - t) * 1000)
        # A JetStream delivery reaches a `>` subscriber too, under the event's own subject
        # (the server routes it by the consumer's inbox): its reply names the consumer.
        m = re.match(r"\$JS\.ACK\.[^.]+\.([^.]+)\.", msg.reply or "")
        kind = "dlv:" + m.group(1) if m else "pub"
        out.write("%.6f %s %d %s %s\n" % (now, msg.subject, len(msg.data), lat or "-", kind))

    await nc.subscribe(">", cb=on_msg)
    await nc.flush()
    print("probe ready", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    await nc.drain()


async def state(url):
    import nats
    nc = await nats.connect(url, user="probe", password="probe", max_reconnect_attempts=0)
    js = nc.jetstream()
    streams = {}
    for info in await js.streams_info():
        streams[info.config.name] = {"messages": info.state.messages, "bytes": info.state.bytes}
    subjects = {}
    try:
        info = await js.stream_info("STEWARD", subjects_filter=">")
        subjects = info.state.subjects or {}
    except Exception as e:  # an older server: no per-subject counts
        subjects = {"error": str(e)}
    print(json.dumps({"streams": streams, "subjects": subjects}))
    await nc.close()


def fold(subject):
    """A subject with its host, consumer, key and reply tokens folded, to count by kind."""
    s = re.sub(r"\bsim-\d+\b", "<host>", subject)
    s = re.sub(r"^_INBOX[^.]*\..*", "_INBOX.<reply>", s)
    # A hub's source of a leaf's stream or bucket (LEAVES=1): one delivery subject per source.
    s = re.sub(r"^leaf\.<host>\.S\..*", "leaf.<host>.S.<source>", s)
    s = re.sub(r"^\$JS\.ACK\.([^.]+)\.([^.]+)\..*", r"$JS.ACK.\1.\2.<ack>", s)
    s = re.sub(r"^\$KV\.([^.]+)\.<host>\..*", r"$KV.\1.<host>.<key>", s)
    s = re.sub(r"^\$KV\.STEWARD_HANDLED\.([^.]+)\..*", r"$KV.STEWARD_HANDLED.\1.<event id>", s)
    s = re.sub(r"^\$KV\.([^.]+)\.(?!<).*", r"$KV.\1.<key>", s)
    s = re.sub(r"^(\$JS\.API\.DIRECT\.GET\.[^.]+)\..*", r"\1.<key>", s)
    s = re.sub(r"^(\$JS\.FC\.[^.]+)\..*", r"\1.<fc>", s)
    return s


def lines(log, start, end):
    with open(log) as f:
        for i, line in enumerate(f):
            if start <= i < end:
                yield line.split(" ")


def summary(log, start, end):
    counts, sizes = {}, {}
    for parts in lines(log, start, end):
        k = fold(parts[1])
        if parts[4].strip() != "pub":
            consumer = fold(parts[4].strip()[4:])
            # A service's durable consumer by name; a KV watch's ordered consumer is random.
            if not re.match(r"(watcher|updater|backup|health|notifier|deployer)(-<host>)?$", consumer):
                consumer = "<ephemeral>"
            k += " (delivery to %s)" % consumer
        counts[k] = counts.get(k, 0) + 1
        sizes[k] = sizes.get(k, 0) + int(parts[2])
    total = sum(counts.values())
    print(json.dumps({"total": total, "bytes": sum(sizes.values()),
                      "by_subject": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}))


def latency(log, start, end, pattern, kind):
    rx = re.compile(pattern)
    ms = sorted(float(p[3]) for p in lines(log, start, end)
                if rx.search(p[1]) and p[3] != "-" and re.match(kind, p[4].strip()))
    if not ms:
        print(json.dumps({"n": 0}))
        return
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
    print(json.dumps({"n": len(ms), "p50_ms": round(pick(0.5), 2), "p99_ms": round(pick(0.99), 2),
                      "max_ms": round(ms[-1], 2)}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "watch":
        asyncio.run(watch(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    elif mode == "state":
        asyncio.run(state(sys.argv[2]))
    elif mode == "summary":
        summary(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "latency":
        latency(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
    else:
        sys.exit("usage: see the docstring")
