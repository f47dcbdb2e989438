"""Bus benchmark: reading one 100k-message partition of the JetStream device stream with the
partition consumer (batched fetch of 1,000 and of 100, each message turned into a
``BusMessage``, one acknowledgement per batch), against aiomqtt's per-message receive draining
the same number of QoS 1 messages from a Mosquitto persistent session; plus the re-key stage
(validated messages published onto the trip stream, all confirmed).

``--worker``: one whole ``cargowatch worker`` process (both stages: validate and re-key, then
store, rules, alarms) draining N fixes of a 100-trip fleet (1,500 GPS units) from the device
stream into a private TimescaleDB; its CPU time per message (from ``/proc``, counted from when
it owns every partition until every fix is stored) and the drain rate. ``--profile FILE``
records it with py-spy meanwhile (speedscope format).

Prints one JSON object. Starts its own private nats-server (and Mosquitto for the baseline).

    .venv/bin/python -m bench.bus [--quick] [--messages N]
    .venv/bin/python -m bench.bus --worker [--messages N] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
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
from telemetry.bus.streams import DEVICE_STREAM, StreamLimits, ensure_streams, stream_name
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
        await js.delete_consumer(stream_name(DEVICE_STREAM, durable_partition), with_consumer)
    done = asyncio.Event()
    got = 0

    async def handler(msgs: Sequence[BusMessage]) -> None:
        nonlocal got
        got += len(msgs)
        if got >= n:
            done.set()

    c = PartitionConsumer(js, DEVICE_STREAM, "part", durable_partition, handler, batch=batch)
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


def _fleet_fill(url: str, gps: list[str], n: int) -> float:
    """n fixes spread over ``gps`` through the server's mapping (as MQTT devices publish)."""

    async def run() -> float:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=4000)
        now = int(time.time() * 1000)
        subjects = [g.replace(".", "//") for g in gps]  # as the MQTT listener maps a "."
        t0 = time.perf_counter()
        pending = []
        for i in range(n):
            k = i // len(gps)
            body = {"ts": now - n + i, "lat": 31.45 - 0.0001 * (k % 7),
                    "lon": 121.10 + 0.0001 * (k % 5), "speed_kmh": 0.0, "seq": i}  # fmt: skip
            subject = f"devices.{subjects[i % len(gps)]}.position"
            pending.append(await js.publish_async(subject, orjson.dumps(body)))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await nc.close()
        return n / (time.perf_counter() - t0)

    return asyncio.run(run())


def worker_drain(n: int, profile: str | None) -> dict:
    import subprocess

    from bench.live import ADMIN, cpu_s, seed
    from telemetry.store import open_store
    from tests.bus_support import lease_pids, spawn, wait_for
    from tests.services import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="cw-bench-worker-"))
    root.chmod(0o755)  # the cluster runs as the postgres user
    (root / "pg").mkdir()
    pg = PostgresServer(root / "pg").start()
    srv = NatsServer(root / "nats", partitions=P).start()
    proc = spy = None
    try:
        db = pg.create_database("bench")
        gps, _ = seed(db, 100, 15)
        env = {"CARGOWATCH_DB": db, "CARGOWATCH_BUS": srv.url, "CARGOWATCH_ADMIN_KEY": ADMIN,
               "CARGOWATCH_LOG_LEVEL": "warning", "CARGOWATCH_BUS_DEVICES_GIB": "4",
               "CARGOWATCH_BUS_TRIPS_GIB": "4"}  # fmt: skip
        proc = spawn(["worker"], root / "worker.log", **env)
        print(f"worker pid {proc.pid}; {root}", file=sys.stderr, flush=True)
        wait_for(lambda: len(lease_pids(srv.url)) == 2 * P, 120, "partitions owned")
        time.sleep(1.0)
        if profile:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid),
                 "--format", "speedscope", "-o", profile, "--rate", "200", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        store = open_store(db)
        cpu0, t0 = cpu_s(proc.pid), time.perf_counter()
        fill = _fleet_fill(srv.url, gps, n)
        print(f"filled {n} at {fill:.0f}/s", file=sys.stderr, flush=True)
        stored = 0
        while stored < n:
            time.sleep(0.2)
            counts = store.count_telemetry()
            stored = counts["fixes"]
            print(f"{time.perf_counter() - t0:.1f} s {counts}", file=sys.stderr, flush=True)
            if time.perf_counter() - t0 > 900:
                raise SystemExit(f"only {stored} of {n} stored after 900 s")
        elapsed, cpu = time.perf_counter() - t0, cpu_s(proc.pid) - cpu0
        store.close()
        return {
            "messages": n,
            "fill_msgs_per_s": round(fill),
            "drain_msgs_per_s": round(n / elapsed),
            "worker_cpu_us_per_msg": round(cpu / n * 1e6, 1),
            "seconds": round(elapsed, 2),
        }
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        srv.stop()
        pg.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k messages")
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--no-baseline", action="store_true", help="skip the aiomqtt baseline")
    ap.add_argument("--worker", action="store_true", help="one worker process draining fixes")
    ap.add_argument("--profile", help="with --worker: py-spy speedscope output file")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker_drain(args.messages if args.messages != 500_000 else 50_000,
                                      args.profile), indent=1))  # fmt: skip
        raise SystemExit(0)
    n = 100_000 if args.quick else args.messages
    print(json.dumps(asyncio.run(main(n, not args.no_baseline)), indent=1))
