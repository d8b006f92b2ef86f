#!/usr/bin/env python3
"""Peer for the bus benchmark: the same work with the official Python client (nats-py).

latency: publish a CloudEvents JSON event with Nats-Msg-Id and wait for the stream ack, then
         fetch it from a durable pull consumer, decode it and ack it with confirmation;
         p50/p99 over N events (the shape of a hand-written Python sidecar).
replay:  read N stored events back with a pull consumer without acks and decode each.
Usage: peer_nats_py.py NATS_URL LATENCY_EVENTS REPLAY_EVENTS
"""
import asyncio
import json
import sys
import time
import uuid
from datetime import datetime, timezone

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig


def event():
    eid = str(uuid.uuid4())
    return eid, json.dumps({
        "specversion": "1.0", "id": eid, "source": "peer/bench", "type": "watch.requested",
        "time": datetime.now(timezone.utc).isoformat(), "datacontenttype": "application/json",
        "correlationid": eid, "data": {},
    }).encode()


def pct(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, round((len(sorted_values) - 1) * p))]


async def main(url, n_latency, n_replay):
    nc = await nats.connect(url)
    js = nc.jetstream()
    tag = uuid.uuid4().hex[:10]
    stream, prefix = f"PEER_{tag}", f"peer{tag}"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"], storage=StorageType.FILE))
    try:
        sub = await js.pull_subscribe(f"{prefix}.watch.requested", durable="peer",
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        samples = []
        for i in range(n_latency + 200):
            eid, payload = event()
            t0 = time.perf_counter()
            await js.publish(f"{prefix}.watch.requested", payload, headers={"Nats-Msg-Id": eid})
            msgs = await sub.fetch(1, timeout=10)
            json.loads(msgs[0].data)
            t1 = time.perf_counter()
            await msgs[0].ack_sync()
            if i >= 200:
                samples.append(t1 - t0)
        samples.sort()
        print(f"peer nats-py latency publish->handled over {n_latency} events: "
              f"p50 {pct(samples, .5) * 1e3:.3f} ms, p99 {pct(samples, .99) * 1e3:.3f} ms")

        acks = []
        for _ in range(n_replay):
            eid, payload = event()
            acks.append(js.publish(f"{prefix}.replay", payload, headers={"Nats-Msg-Id": eid}))
            if len(acks) >= 500:
                await asyncio.gather(*acks)
                acks = []
        await asyncio.gather(*acks)
        t0 = time.perf_counter()
        reader = await js.pull_subscribe(f"{prefix}.replay", durable=None,
                                         config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        read = 0
        while read < n_replay:
            for m in await reader.fetch(min(1000, n_replay - read), timeout=10):
                json.loads(m.data)
                read += 1
        secs = time.perf_counter() - t0
        print(f"peer nats-py replay: {read} events decoded in {secs:.3f} s = {read / secs:.0f} events/s")
    finally:
        await js.delete_stream(stream)
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
