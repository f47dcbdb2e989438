"""Publishing: URL parsing, a real (embedded amqtt) broker, pacing on a manual clock, the rate
limit, reconnects through a restarted Mosquitto, registration and the CLI entry point."""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import pytest
import pytest_asyncio

from api import create_app
from core.clock import ManualClock
from simulators import PublishError, SimTrip, build_scenario, publish, register, run_cli
from simulators.publish import build_for_cli, parse_mqtt_url
from tests.api_world import ADMIN_KEY, make_runtime
from tests.services import MosquittoServer, free_port

START = 1_795_334_400_000


def test_parse_mqtt_url() -> None:
    a = parse_mqtt_url("mqtt://user:p%40ss@broker.local:1884")
    assert (a.host, a.port, a.username, a.password, a.tls) == (
        "broker.local",
        1884,
        "user",
        "p@ss",
        False,
    )
    assert parse_mqtt_url("mqtts://h").port == 8883 and parse_mqtt_url("mqtts://h").tls
    assert parse_mqtt_url("127.0.0.1:1999").port == 1999
    assert parse_mqtt_url("tcp://h").port == 1883
    for bad in ("http://h", "mqtt://:1883", "mqtt://h:notaport"):
        with pytest.raises(PublishError):
            parse_mqtt_url(bad)


@pytest_asyncio.fixture(loop_scope="function")
async def broker() -> AsyncIterator[str]:
    """An embedded amqtt broker on a free port (no external service), in the test's loop."""
    from amqtt.broker import Broker

    port = free_port()
    b = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await b.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await b.shutdown()


async def collect(
    url: str, got: list[aiomqtt.Message], ready: asyncio.Event, topic: str = "sim/#"
) -> None:
    addr = parse_mqtt_url(url)
    async with aiomqtt.Client(addr.host, addr.port) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for msg in client.messages:
            got.append(msg)


def small_trip() -> SimTrip:
    trip = build_scenario("signal_loss_backlog", seed=1, start_ms=START)
    # keep the test short: the first 120 messages (arrays included)
    trip.__dict__["messages"] = [m for m in trip.messages if m.payload.startswith(b"[")][
        :2
    ] + trip.messages[:118]
    trip.messages.sort(key=lambda m: m.at_ms)
    return trip


async def wait_for(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_publish_everything_in_order(broker: str) -> None:
    trip = small_trip()
    got: list[aiomqtt.Message] = []
    ready = asyncio.Event()
    sub = asyncio.create_task(collect(broker, got, ready))
    await ready.wait()
    seen: list[dict] = []
    stats = await publish(
        [trip], broker, speed=math.inf, prefix="sim", progress=seen.append, progress_every_s=0.0
    )
    await wait_for(lambda: len(got) >= len(trip.messages))
    sub.cancel()
    assert stats["published"] == len(trip.messages) == 120 and stats["reconnects"] == 0
    assert set(stats) >= {"published", "seconds", "rate"}
    assert seen and seen[-1]["published"] == 120
    assert [str(m.topic) for m in got] == [m.topic("sim") for m in trip.messages]
    assert [m.payload for m in got] == [m.payload for m in trip.messages]


async def test_rate_limit_spreads_messages(broker: str) -> None:
    trip = small_trip()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stats = await publish([trip], broker, speed=math.inf, rate_limit=400.0, prefix="sim")
    # 120 messages at 400/s cannot take less than ~0.3 s (a lower bound, not a speed claim)
    assert loop.time() - t0 >= 119 / 400 - 0.01
    assert stats["published"] == 120


async def test_manual_clock_paces_publishing(broker: str) -> None:
    trip = small_trip()
    clock = ManualClock(START)
    got: list[aiomqtt.Message] = []
    ready = asyncio.Event()
    sub = asyncio.create_task(collect(broker, got, ready))
    await ready.wait()
    pub = asyncio.create_task(publish([trip], broker, clock=clock, prefix="sim"))
    for minutes in (5, 20, 60, 24 * 60):
        clock.set(START + minutes * 60_000)
        due = [m for m in trip.messages if m.at_ms <= clock.now_ms()]
        await wait_for(lambda due=due: len(got) >= len(due))
        await asyncio.sleep(0.1)
        assert len(got) == len(due)  # nothing before its time
    stats = await asyncio.wait_for(pub, 10)
    sub.cancel()
    assert stats["published"] == len(trip.messages)


async def test_unreachable_broker_gives_up() -> None:
    trip = small_trip()
    with pytest.raises(PublishError, match="unreachable"):
        await publish([trip], f"mqtt://127.0.0.1:{free_port()}", speed=math.inf, give_up_s=0.5)


@pytest.mark.services
async def test_reconnects_through_a_broker_restart(tmp_path: Path) -> None:
    """Mosquitto goes away mid-run and comes back on the same port: every message arrives
    (at least once) and the publisher reports the reconnect."""
    (tmp_path / "mq").mkdir()
    server = MosquittoServer(tmp_path / "mq").start()
    trip = small_trip()
    got: list[aiomqtt.Message] = []
    try:
        pub = asyncio.create_task(
            publish([trip], server.url, speed=math.inf, rate_limit=60.0, prefix="sim")
        )
        await asyncio.sleep(0.6)
        server.stop()
        await asyncio.sleep(0.5)
        server.start()
        ready = asyncio.Event()
        sub = asyncio.create_task(collect(server.url, got, ready))
        stats = await asyncio.wait_for(pub, 30)
        await asyncio.sleep(0.3)
        sub.cancel()
    finally:
        server.stop()
    assert stats["reconnects"] >= 1
    assert stats["published"] >= len(trip.messages)
    # what was published after the restart reached the new subscriber, in order
    tail = [m.payload for m in got]
    assert len(tail) > 10
    assert tail == [m.payload for m in trip.messages][-len(tail) :]


async def test_register_posts_devices_fences_and_trips() -> None:
    trip = build_scenario("rest_area_stop", seed=2, start_ms=START)
    calls: list[tuple[str, dict]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer k1"
        calls.append((request.url.path, json.loads(request.content)))
        return httpx.Response(409 if request.url.path == "/v1/geofences" else 201, json={})

    counts = await register(
        [trip], "http://api.test/", "k1", transport=httpx.MockTransport(handler)
    )
    assert counts == {"devices": len(trip.devices), "geofences": 0, "trips": 1, "existing": 1}
    assert [p for p, _ in calls] == ["/v1/devices"] * len(trip.devices) + [
        "/v1/geofences",
        "/v1/trips",
    ]
    assert calls[-1][1] == json.loads(json.dumps(trip.trip))


async def test_register_is_accepted_by_the_real_api(tmp_path: Path) -> None:
    # one trip with a combined GPS e-lock, one with two units, one with a rest area
    trips = [
        build_scenario(name, seed=seed, start_ms=START)
        for name, seed in (("rope_cut", 0), ("normal", 1), ("rest_area_stop", 2))
    ]
    assert {len(t.devices) for t in trips} == {1, 2}
    runtime = make_runtime(tmp_path, ManualClock(START))
    transport = httpx.ASGITransport(app=create_app(runtime))
    counts = await register(trips, "http://api.test", ADMIN_KEY, transport=transport)
    n_devices = sum(len(t.devices) for t in trips)
    assert counts == {"devices": n_devices, "geofences": 1, "trips": 3, "existing": 0}
    combo = next(t for t in trips if len(t.devices) == 1).devices[0]["device_id"]
    assert runtime.store.get_device(combo)["kind"] == "combo"
    again = await register(trips, "http://api.test", ADMIN_KEY, transport=transport)
    assert again["trips"] == 0 and again["existing"] == 3  # devices and fences update in place
    runtime.close()


def test_build_for_cli() -> None:
    mixed = build_for_cli(25, "mixed", 1, START)
    assert len(mixed) == 25 and len({t.scenario for t in mixed}) == 19
    assert [t.scenario for t in build_for_cli(3, "tamper", 1, START)] == ["tamper"] * 3
    assert build_for_cli(1, "speeding", 1, START)[0].scenario == "speeding"
    assert {t.scenario for t in build_for_cli(4, "normal", 1, START)} == {"normal"}


async def test_run_cli_writes_trips_and_reports(broker: str, tmp_path: Path) -> None:
    out = io.StringIO()
    path = tmp_path / "trips.jsonl"
    code = await run_cli(
        broker, 3, "normal", math.inf, 5_000.0, 3, trips_out=str(path), start_ms=START, stream=out
    )
    assert code == 0, out.getvalue()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 3 and {"trip", "devices", "expected"} <= set(lines[0])
    text = out.getvalue()
    assert "3 trips (normal)" in text and "done:" in text
    assert await run_cli(broker, 1, "no-such", 60.0, None, 0, stream=io.StringIO()) == 2
    bad = io.StringIO()
    code = await run_cli(
        f"mqtt://127.0.0.1:{free_port()}", 1, "tamper", 1e9, None, 0, stream=bad, give_up_s=0.3
    )
    assert code == 1
    assert "unreachable" in bad.getvalue()
