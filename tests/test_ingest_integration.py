"""Ingest end to end through the real Mosquitto into TimescaleDB and SQLite (issue 2).

Publishes single and backlog fixes and lock events, duplicates and a bad payload of every
reason code, then finds exactly the right rows and dead letters in the store. Also: messages
published while the engine is down are all stored after it restarts (persistent session).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import aiomqtt
import orjson
import pytest

from cargowatch.runtime import Runtime
from cargowatch.settings import Settings

_ids = itertools.count()
NOW_MS = time.time_ns() // 1_000_000


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cw.sqlite'}"
    return request.getfixturevalue("pg_url")


async def _publish(url: str, items: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", _port(url), protocol=aiomqtt.ProtocolVersion.V5) as c:
        for topic, body in items:
            await c.publish(topic, body, qos=1)


async def _wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


async def _started(runtime: Runtime) -> None:
    assert runtime.ingest is not None
    await _wait_for(lambda: runtime.ingest.connected)


def _fix(ts: int, seq: int | None = None, **kw: object) -> dict:
    body: dict = {"ts": ts, "lat": 31.2304, "lon": 121.4737, "speed_kmh": 40.0, **kw}
    if seq is not None:
        body["seq"] = seq
    return body


async def test_fixes_lock_events_duplicates_and_dead_letters(mqtt_url: str, db_url: str) -> None:
    settings = Settings(mqtt_url=mqtt_url, db_url=db_url, client_id=f"it-{next(_ids)}", batch_ms=20)
    runtime = Runtime.open(settings)
    runtime.register_device({"device_id": "gps-1", "kind": "gps"})
    runtime.register_device({"device_id": "lock-1", "kind": "lock"})
    t = NOW_MS - 600_000
    iso = "2026-11-22T08:00:05+08:00"
    good = [
        ("devices/gps-1/position", orjson.dumps(_fix(t, 1))),
        ("devices/gps-1/position", orjson.dumps([_fix(t + 10_000, 2), _fix(t + 20_000, 3)])),
        ("devices/gps-1/position", orjson.dumps(_fix(iso, None, extra_field="kept"))),
        (
            "devices/lock-1/lock",
            orjson.dumps({"ts": t, "event": "locked", "method": "rfid", "seq": 1}),
        ),
        (
            "devices/lock-1/lock",
            orjson.dumps(
                [{"ts": t + 5_000, "event": "heartbeat"}, {"ts": t + 6_000, "event": "tamper"}]
            ),
        ),
    ]
    duplicates = [
        ("devices/gps-1/position", orjson.dumps(_fix(t, 1))),  # same ts + seq
        ("devices/gps-1/position", orjson.dumps(_fix(iso, None))),  # same ts, no seq
        (
            "devices/lock-1/lock",
            orjson.dumps({"ts": t, "event": "locked", "method": "rfid", "seq": 1}),
        ),
    ]
    bad = {
        "bad_json": ("devices/gps-1/position", b"{not json"),
        "schema": ("devices/gps-1/position", orjson.dumps({"lat": 1.0, "lon": 2.0})),
        "out_of_range": ("devices/gps-1/position", orjson.dumps(_fix(t, 9, lat=91.0))),
        "topic_mismatch": ("devices/gps-1/position", orjson.dumps(_fix(t, 10, device_id="gps-2"))),
        "unknown_device": ("devices/ghost-9/position", orjson.dumps(_fix(t, 11))),
        "too_large": ("devices/gps-1/position", b"[" + b" " * (300 * 1024) + b"]"),
        "future_ts": ("devices/gps-1/position", orjson.dumps(_fix(NOW_MS + 3_600_000, 12))),
        "bad_topic": ("devices/bad$id/position", orjson.dumps(_fix(t, 13))),
    }
    async with runtime.running():
        await _started(runtime)
        await _publish(mqtt_url, good + duplicates + list(bad.values()))
        await _wait_for(
            lambda: (
                runtime.metrics.value("cargowatch_messages_in_total")
                >= len(good) + len(duplicates) + len(bad)
            )
        )
    store = runtime.store
    try:
        counts = store.count_telemetry()
        assert counts["fixes"] == 4
        assert counts["lock_events"] == 3
        fixes = store.fixes(["gps-1"])
        # Ordered by event time: the RFC 3339 fix is a day older than the others.
        assert [f.seq for f in fixes] == [None, 1, 2, 3]
        assert fixes[0].extra == {"extra_field": "kept"}
        events = store.lock_events(["lock-1"])
        assert [e.event for e in events] == ["locked", "heartbeat", "tamper"]
        letters = store.dead_letters(limit=100)
        assert sorted(d["reason"] for d in letters) == sorted(bad)
        too_large = next(d for d in letters if d["reason"] == "too_large")
        assert len(too_large["payload"]) == 64 * 1024
        assert runtime.metrics.value("cargowatch_duplicates_total") == len(duplicates)
        assert runtime.metrics.value("cargowatch_dead_letters_total", reason="schema") == 1
    finally:
        runtime.close()


async def test_messages_published_while_engine_is_down_are_all_stored(
    mqtt_url: str, db_url: str
) -> None:
    client_id = f"it-restart-{next(_ids)}"
    settings = Settings(mqtt_url=mqtt_url, db_url=db_url, client_id=client_id, batch_ms=20)
    first = Runtime.open(settings)
    first.register_device({"device_id": "gps-r", "kind": "gps"})
    t = NOW_MS - 3_600_000
    async with first.running():
        await _started(first)
        await _publish(mqtt_url, [("devices/gps-r/position", orjson.dumps(_fix(t, 0)))])
        await _wait_for(lambda: first.store.count_telemetry()["fixes"] == 1)
    first.close()

    while_down = [
        ("devices/gps-r/position", orjson.dumps(_fix(t + i * 1000, i))) for i in range(1, 301)
    ]
    await _publish(mqtt_url, while_down)

    second = Runtime.open(settings)
    try:
        async with second.running():
            await _wait_for(lambda: second.store.count_telemetry()["fixes"] == 301, timeout=30)
        assert [f.seq for f in second.store.fixes(["gps-r"])] == list(range(301))
    finally:
        second.close()
