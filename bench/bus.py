"""Bus benchmark: reading one 100k-message partition of the JetStream device stream with the
partition consumer (batched fetch of 1,000 and of 100, each message turned into a
``BusMessage``, one acknowledgement per batch), against aiomqtt's per-message receive draining
the same number of QoS 1 messages from a Mosquitto persistent session; plus the re-key stage
(validated messages published onto the trip stream, all confirmed).

Prints one JSON object. Starts its own private nats-server (and Mosquitto for the baseline).

    .venv/bin/python -m bench.bus [--quick] [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiomqtt
import nats
import orjson
from nats.js import JetStreamContext

from telemetry.bus.consumer import BusMessage, PartitionConsumer
from telemetry.bus.partitions import partition_of
from telemetry.bus.rekey import Rekeyed, Rekeyer
from telemetry.bus.streams import StreamLimits, ensure_streams
from tests.nats_service import NatsServer
from tests.services import MosquittoServer

T0_MS = 1_795_334_400_000
P = 4
LIMITS = StreamLimits(max_age_s=3600, max_bytes=4 << 30)


def _payload(i: int) -> bytes:
    return orjson.dumps(
        {"ts": T0_MS + i * 1000, "lat": 31.0 + i * 1e-6, "lon": 121.0, "speed_kmh": 62.5,
         "heading_deg": 90, "hdop": 0.9, "sats": 11, "battery_pct": 88, "seq": i}
    )  # fmt: skip


def _devices_in_partition_0(k: int) -> list[str]:
    return [d for d in (f"bench-{i:05d}" for i in range(50 * k)) if partition_of(d, P) == 0][:k]


async def _fill(js: JetStreamContext, n: int) -> float:
    """n messages into partition 0 through the server's mapping, as MQTT devices would."""
    devices = _devices_in_partition_0(100)
    t0 = time.perf_counter()
    pending = []
    for i in range(n):
        pending.append(
            await js.publish_async(f"devices.{devices[i % len(devices)]}.position", _payload(i))
        )
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return n / (time.perf_counter() - t0)


async def _drain(js: JetStreamContext, n: int, batch: int, durable_partition: int = 0) -> dict:
    """Read partition 0 from the start with a fresh durable consumer; msgs/s until all n."""
    with_consumer = f"p{durable_partition}"
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer("DEVICES", with_consumer)
    done = asyncio.Event()
    got = 0

    async def handler(msgs: Sequence[BusMessage]) -> None:
        nonlocal got
        got += len(msgs)
        if got >= n:
            done.set()

    c = PartitionConsumer(js, "DEVICES", "part", durable_partition, handler, batch=batch)
    t0, cpu0 = time.perf_counter(), time.process_time()
    await c.start()
    await asyncio.wait_for(done.wait(), 600)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await c.stop()
    return {
        "batch": batch,
        "msgs_per_s": round(n / elapsed),
        "cpu_us_per_msg": round(cpu / n * 1e6, 1),
        "seconds": round(elapsed, 2),
    }


async def _rekey(js: JetStreamContext, n: int) -> dict:
    rekeyer = Rekeyer(js, P)
    items = [
        Rekeyed(f"bench-{i % 1000:05d}", "position", T0_MS + i, i, f"T-{i % 300}", _payload(i))
        for i in range(n)
    ]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for k in range(0, n, 1000):
        await rekeyer.publish(items[k : k + 1000])
    return {
        "batch": 1000,
        "msgs_per_s": round(n / (time.perf_counter() - t0)),
        "cpu_us_per_msg": round((time.process_time() - cpu0) / n * 1e6, 1),
    }


async def _aiomqtt_drain(n: int) -> dict:
    """aiomqtt's per-message receive of a QoS 1 backlog from a Mosquitto persistent session."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    with MosquittoServer(Path(tempfile.mkdtemp(prefix="cw-bench-mq-"))) as mq:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = 20_000
        kwargs = {
            "identifier": "bench-bus-sub",
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": False,
            "properties": props,
        }
        async with aiomqtt.Client("127.0.0.1", mq.port, **kwargs) as c:  # type: ignore[arg-type]
            await c.subscribe("devices/+/position", qos=1)
        quiet = logging.getLogger("bench.bus.publisher")  # aiomqtt warns per pending publish
        quiet.setLevel(logging.ERROR)
        async with aiomqtt.Client(
            "127.0.0.1",
            mq.port,
            identifier="bench-bus-pub",
            max_inflight_messages=1000,
            logger=quiet,
        ) as pub:
            pending = []
            for i in range(n):
                pending.append(pub.publish(f"devices/bench-{i % 100:05d}/position", _payload(i), 1))
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        got = 0
        async with aiomqtt.Client("127.0.0.1", mq.port, **kwargs) as c:  # type: ignore[arg-type]
            t0, cpu0 = time.perf_counter(), time.process_time()
            async for _ in c.messages:
                got += 1
                if got >= n:
                    break
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "msgs_per_s": round(n / elapsed),
        "cpu_us_per_msg": round(cpu / n * 1e6, 1),
        "seconds": round(elapsed, 2),
    }


async def main(n: int, baseline: bool) -> dict:
    out: dict = {"messages": n, "partitions": P}
    with NatsServer(Path(tempfile.mkdtemp(prefix="cw-bench-nats-")), partitions=P) as srv:
        nc = await nats.connect(srv.url)
        js = nc.jetstream(publish_async_max_pending=4000)
        await ensure_streams(js, LIMITS, LIMITS)
        out["fill_msgs_per_s"] = round(await _fill(js, n))
        out["fetch_1000"] = await _drain(js, n, 1000)
        out["fetch_100"] = await _drain(js, n, 100)
        out["rekey"] = await _rekey(js, min(n, 50_000))
        await nc.close()
    if baseline:
        out["aiomqtt_per_message"] = await _aiomqtt_drain(n)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k messages")
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--no-baseline", action="store_true", help="skip the aiomqtt baseline")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.messages
    print(json.dumps(asyncio.run(main(n, not args.no_baseline)), indent=1))
