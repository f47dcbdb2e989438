"""Stream layout benchmark: draining device partition 0 while it is behind the stream's tail,
with one stream per partition (what cargowatch uses, no filter) against one stream for all
partitions read by a consumer filtered by partition — with one filter, and with the two that
partition 0 had in the layout before 2026-12-06 (its partition and the device topics the
mapping leaves alone). Same messages, same client loop, a fresh nats-server each.

N QoS-less publishes through the server's partition mapping, spread over K devices (every
device is a subject), then partition 0 is read from the start in fetches of 1,000 with one
acknowledgement per batch until all of it is read. Reports drain msg/s and the server's CPU
per message (from ``/proc``). Prints one JSON object. The two filters' cost grows with the
stream: at 20,000 messages the layouts drain alike, at 100,000 (the default) they do not.

    .venv/bin/python -m bench.streams [--messages 100000] [--devices 21000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bench.bus import _payload
from bench.live import cpu_s
from telemetry.bus.partitions import partition_of
from tests.nats_service import NatsServer

P = 4


async def _run(layout: str, n: int, k: int) -> dict[str, Any]:
    with NatsServer(partitions=P) as srv:
        assert srv.proc is not None
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream(publish_async_max_pending=4000)
            if layout == "stream_per_partition":
                for p in range(P):
                    await js.add_stream(StreamConfig(name=f"D{p}", subjects=[f"part.{p}.>"]))
                stream, filt = "D0", None
            else:  # the old DEVICES stream: partition 0 also read unmapped device topics
                subjects = ["part.*.devices.*.*", "devices.>"]
                await js.add_stream(StreamConfig(name="D", subjects=subjects))
                stream, filt = "D", "part.0.>"
            devices = [f"bench-{i:05d}" for i in range(k)]
            t0 = time.perf_counter()
            pending = []
            for i in range(n):
                subject = f"devices.{devices[i % k]}.position"
                pending.append(await js.publish_async(subject, _payload(i)))
                if len(pending) >= 2000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            fill_s = time.perf_counter() - t0
            want = sum(1 for i in range(n) if partition_of(devices[i % k], P) == 0)
            config = ConsumerConfig(
                durable_name="p0",
                ack_policy=AckPolicy.ALL,
                max_ack_pending=2000,
                filter_subject=filt if layout != "one_stream_two_filters" else None,
                filter_subjects=["part.0.>", "devices.>"]
                if layout == "one_stream_two_filters"
                else None,
            )
            await js.add_consumer(stream, config)
            sub = await js.pull_subscribe_bind("p0", stream=stream)
            cpu0, t0, got = cpu_s(srv.proc.pid), time.perf_counter(), 0
            while got < want:
                msgs = await sub.fetch(1000, timeout=30)
                got += len(msgs)
                await msgs[-1].ack_sync()
            drain_s = time.perf_counter() - t0
            cpu = cpu_s(srv.proc.pid) - cpu0
            return {
                "publish_msg_per_s": round(n / fill_s),
                "partition_0_messages": got,
                "drain_msg_per_s": round(got / drain_s),
                "server_cpu_us_per_msg": round(cpu / got * 1e6, 1),
            }
        finally:
            await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=21_000)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"messages": args.messages, "devices": args.devices, "partitions": P}
    for layout in ("stream_per_partition", "one_stream_filtered", "one_stream_two_filters"):
        report[layout] = asyncio.run(_run(layout, args.messages, args.devices))
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
