"""Ingest benchmark: a QoS 1 backlog queued in Mosquitto for the engine's persistent session,
drained into TimescaleDB (stored and committed); the same backlog drained by a bare MQTT
client (the ceiling one Python client sets); and the store's COPY path alone.

Prints one JSON object. Starts its own private Mosquitto and TimescaleDB (fsync on) unless
``--mqtt`` / ``--db`` are given.

    .venv/bin/python -m bench.ingest [--quick] [--messages N] [--devices N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiomqtt
import orjson

from cargowatch.runtime import Runtime
from cargowatch.settings import Settings
from telemetry.models import Fix
from telemetry.store import open_store
from tests.services import MosquittoServer, PostgresServer

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
        await _create_session(mqtt_url, "bench-engine")
        await _create_session(mqtt_url, "bench-raw")
        publish_rate = await _publish_backlog(mqtt_url, n, devices)
        raw = await _raw_drain(mqtt_url, n, "bench-raw")
        engine = await _engine_drain(mqtt_url, db_url, n, devices)
        copy_rate = _copy_bench(db_url, args.copy_rows)
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
    p.add_argument("--mqtt", default=None)
    p.add_argument("--db", default=None)
    args = p.parse_args(argv)
    args.messages = args.messages or (20_000 if args.quick else 100_000)
    args.copy_rows = args.copy_rows or (50_000 if args.quick else 200_000)
    result = asyncio.run(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
