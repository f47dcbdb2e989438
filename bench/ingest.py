"""Ingest benchmark: a QoS 1 backlog queued in Mosquitto for the engine's persistent session,
drained into TimescaleDB (stored and committed); the same backlog drained by the engine's MQTT
client alone (``MqttIngest``, acknowledging each batch at once) and by bare paho and aiomqtt
clients (the ceiling one Python client sets); the store's COPY path alone; and a restart behind
an unacknowledged backlog (an ingest killed with ``kill -9`` while paused, then a new one on the
same session: time to CONNACK, time to drain, connections needed, most messages held).

Prints one JSON object. Starts its own private Mosquitto and TimescaleDB (fsync on) unless
``--mqtt`` / ``--db`` are given.

    .venv/bin/python -m bench.ingest [--quick] [--messages N] [--devices N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiomqtt
import orjson

from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from telemetry.ingest import MqttIngest, RawBatch
from telemetry.models import Fix
from telemetry.store import open_store
from tests.services import MosquittoServer, PostgresServer, publish

T0_MS = 1_795_334_400_000


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _payload(i: int, devices: int) -> tuple[str, bytes]:
    dev = f"bench-{i % devices:05d}"
    k = i // devices
    body = {
        "ts": T0_MS + k * 10_000 + (i % 1000),
        "lat": 31.0 + (i % devices) * 1e-4 + k * 1e-5,
        "lon": 121.0 + k * 1e-5,
        "speed_kmh": 62.5,
        "heading_deg": 90,
        "hdop": 0.9,
        "sats": 11,
        "battery_pct": 88,
        "seq": k,
    }
    return f"devices/{dev}/position", orjson.dumps(body)


async def _create_session(url: str, client_id: str) -> None:
    """Subscribe once with a persistent session so the broker queues for it while it is away."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    async with aiomqtt.Client(
        "127.0.0.1",
        _port(url),
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
    ) as c:
        await c.subscribe("devices/+/position", qos=1)
        await c.subscribe("devices/+/lock", qos=1)


async def _publish_backlog(url: str, n: int, devices: int, publishers: int = 4) -> float:
    t0 = time.perf_counter()

    async def one(part: int) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", _port(url), identifier=f"bench-pub-{part}", max_inflight_messages=1000
        ) as c:
            pending = []
            for i in range(part, n, publishers):
                topic, body = _payload(i, devices)
                pending.append(c.publish(topic, body, qos=1))
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

    await asyncio.gather(*(one(p) for p in range(publishers)))
    return n / (time.perf_counter() - t0)


async def _raw_drain(url: str, n: int, client_id: str) -> float:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 20_000
    got = 0
    async with aiomqtt.Client(
        "127.0.0.1",
        _port(url),
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
    ) as c:
        t0 = time.perf_counter()
        async for _ in c.messages:
            got += 1
            if got >= n:
                break
        return n / (time.perf_counter() - t0)


def _paho_drain(url: str, n: int, client_id: str) -> float:
    """A bare paho client (its own network thread, acknowledging on receipt)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    done = threading.Event()
    got = 0

    def on_message(*_: object) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", _port(url), clean_start=False, properties=props)
    t0 = time.perf_counter()
    client.loop_start()
    done.wait(600)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return n / elapsed


async def _client_drain(url: str, n: int, client_id: str) -> dict:
    """The engine's MQTT client alone: batches acknowledged as soon as they arrive."""
    queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=8)
    ingest = MqttIngest(url, queue, client_id=client_id, batch_max=5000, batch_ms=50)
    task = asyncio.create_task(ingest.run())
    got = max_held = 0
    t0 = time.perf_counter()
    try:
        while got < n:
            batch = await queue.get()
            got += len(batch.messages)
            max_held = max(max_held, ingest.state.held)
            batch.ack()
        elapsed = time.perf_counter() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {"per_s": n / elapsed, "max_held": max_held, "capacity": ingest.state.capacity}


_PAUSED_CHILD = """
import asyncio, sys
from telemetry.ingest import MqttIngest

async def main() -> None:
    queue = asyncio.Queue(maxsize=8)  # never drained: nothing is acknowledged
    ingest = MqttIngest(sys.argv[1], queue, client_id=sys.argv[2])
    task = asyncio.create_task(ingest.run())
    while not ingest.connected:
        await asyncio.sleep(0.05)
    print("connected", flush=True)
    while not ingest.state.paused:
        await asyncio.sleep(0.05)
    print("paused", flush=True)
    await task

asyncio.run(main())
"""


async def _restart_behind_backlog(url: str, n: int, devices: int) -> dict:
    """kill -9 an ingest that paused behind a backlog of ``n`` messages, start a new one."""
    client_id = "bench-restart"
    await _create_session(url, client_id)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_CHILD, url, client_id],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        await asyncio.to_thread(child.stdout.readline)
        items = (_payload(i, devices) for i in range(n))
        await asyncio.to_thread(publish, url, items)
        await asyncio.to_thread(child.stdout.readline)  # "paused"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    queue: asyncio.Queue[RawBatch] = asyncio.Queue(maxsize=8)
    ingest = MqttIngest(url, queue, client_id=client_id)
    t0 = time.perf_counter()
    task = asyncio.create_task(ingest.run())
    got = max_held = 0
    connected_s = None
    try:
        while got < n:
            try:
                batch = await asyncio.wait_for(queue.get(), 60)
            except TimeoutError:
                break
            if connected_s is None:
                connected_s = time.perf_counter() - t0
            got += len(batch.messages)
            max_held = max(max_held, ingest.state.held)
            batch.ack()
        elapsed = time.perf_counter() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {
        "backlog": n,
        "received": got,
        "connects": ingest.state.connects,
        "first_batch_s": round(connected_s or -1, 2),
        "drain_s": round(elapsed, 2),
        "per_s": round(got / elapsed),
        "max_held": max_held,
        "capacity": ingest.state.capacity,
    }


async def _engine_drain(mqtt_url: str, db_url: str, n: int, devices: int) -> dict:
    settings = Settings(
        mqtt_url=mqtt_url, db_url=db_url, client_id="bench-engine", batch_max=10_000, batch_ms=100
    )
    runtime = Runtime.open(settings)
    try:
        stored0 = runtime.store.count_telemetry()["fixes"]
        t0 = time.perf_counter()
        async with runtime.running():
            while True:
                stored = runtime.metrics.value(
                    "cargowatch_fixes_stored_total"
                ) + runtime.metrics.value("cargowatch_duplicates_total")
                if stored >= n:
                    break
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - t0
        committed = runtime.store.count_telemetry()["fixes"] - stored0
    finally:
        runtime.close()
    return {"fixes_per_s": n / elapsed, "drain_s": elapsed, "committed": committed}


def _copy_bench(db_url: str, rows: int, batch: int = 10_000) -> float:
    store = open_store(db_url)
    try:
        fixes = [
            Fix(
                f"copy-{i % 10_000:05d}",
                T0_MS + i,
                31.0 + i * 1e-7,
                121.0,
                60.0,
                90.0,
                0.9,
                11,
                80.0,
                i,
            )
            for i in range(rows)
        ]
        t0 = time.perf_counter()
        for s in range(0, rows, batch):
            store.insert_fixes(fixes[s : s + batch])
        return rows / (time.perf_counter() - t0)
    finally:
        store.close()


async def main_async(args: argparse.Namespace) -> dict:
    n, devices = args.messages, args.devices
    mosq = pg = None
    mqtt_url, db_url = args.mqtt, args.db
    try:
        if not mqtt_url:
            mosq = MosquittoServer().start()
            mqtt_url = mosq.url
        if not db_url:
            pg = PostgresServer(durable=True).start()
            db_url = pg.create_database("bench")
        # Register the devices and create both persistent sessions before the backlog exists.
        setup = Runtime.open(Settings(mqtt_url=None, db_url=db_url))
        for d in range(devices):
            setup.store.put_device({"device_id": f"bench-{d:05d}", "kind": "gps", "shipper": None})
        setup.close()
        for session in ("bench-engine", "bench-raw", "bench-paho", "bench-client"):
            await _create_session(mqtt_url, session)
        publish_rate = await _publish_backlog(mqtt_url, n, devices)
        raw = await _raw_drain(mqtt_url, n, "bench-raw")
        paho_rate = await asyncio.to_thread(_paho_drain, mqtt_url, n, "bench-paho")
        client = await _client_drain(mqtt_url, n, "bench-client")
        engine = await _engine_drain(mqtt_url, db_url, n, devices)
        copy_rate = _copy_bench(db_url, args.copy_rows)
        restart = await _restart_behind_backlog(mqtt_url, args.backlog, devices)
    finally:
        if mosq:
            mosq.stop()
        if pg:
            pg.stop()
    return {
        "benchmark": "ingest",
        "messages": n,
        "devices": devices,
        "fixes_per_s": round(engine["fixes_per_s"]),
        "raw_client_per_s": round(raw),
        "ratio_to_raw": round(engine["fixes_per_s"] / raw, 3),
        "drain_per_s": {
            "engine_client": round(client["per_s"]),
            "bare_paho": round(paho_rate),
            "bare_aiomqtt": round(raw),
        },
        "client_max_held": client["max_held"],
        "client_capacity": client["capacity"],
        "restart_behind_backlog": restart,
        "copy_rows_per_s": round(copy_rate),
        "publish_per_s": round(publish_rate),
        "engine_drain_s": round(engine["drain_s"], 2),
        "committed_rows": engine["committed"],
        "store": "timescaledb" if db_url.startswith("postgres") else "sqlite",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run, < 60 s")
    p.add_argument("--messages", type=int, default=None)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--copy-rows", type=int, default=None)
    p.add_argument("--backlog", type=int, default=None, help="restart behind this backlog")
    p.add_argument("--mqtt", default=None)
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    # aiomqtt warns about every pending publish beyond 10 while we publish 500 at a time
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    args.messages = args.messages or (20_000 if args.quick else 100_000)
    args.copy_rows = args.copy_rows or (50_000 if args.quick else 200_000)
    args.backlog = args.backlog or (50_000 if args.quick else 500_000)
    result = asyncio.run(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
