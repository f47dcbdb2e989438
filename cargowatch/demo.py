"""``cargowatch demo``: the main job on embedded defaults.

An in-process MQTT broker (amqtt, a demo broker only), a SQLite file, a simulated fleet with a
few incidents on accelerated time, the engine and the API with its desk page. Prints the URL,
an admin key and a live summary until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cargowatch.listen import listen_socket
from cargowatch.settings import Settings, split_host_port
from core.clock import ScaledClock

if TYPE_CHECKING:  # the engine is imported when the demo runs, not for `--help`
    from amqtt.broker import Broker

    from cargowatch.runtime import Runtime

log = logging.getLogger(__name__)

DEMO_INCIDENTS = (
    "tamper",
    "unlock_en_route",
    "route_deviation",
    "speeding",
    "long_stop",
    "signal_loss_backlog",
    "wrong_consignee",
    "low_battery",
)


async def start_embedded_broker(port: int) -> Broker:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    return broker


def _summary(runtime: Runtime, published: dict[str, Any], started: float) -> str:
    open_alarms = runtime.store.list_alarms(status=["open", "acknowledged"], limit=100_000)
    by_type = Counter(a["type"] for a in open_alarms)
    msgs = runtime.metrics.value("cargowatch_messages_in_total")
    elapsed = max(1e-6, time.monotonic() - started)
    types = ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())) or "none yet"
    sim_time = time.strftime("%H:%M", time.gmtime(runtime.clock.now_ms() / 1000))
    active = len(runtime.engine.active_trips())
    return (
        f"[demo] sim time {sim_time}Z | trucks {published.get('trucks', 0)}"
        f" | active trips {active} | messages {int(msgs)} ({msgs / elapsed:.0f}/s)"
        f" | open alarms {len(open_alarms)}: {types}"
    )


async def run_demo(
    *,
    http: str = "127.0.0.1:8080",
    trucks: int = 24,
    speed: float = 30.0,
    db_path: str = "cargowatch-demo.sqlite",
    duration_s: float | None = None,
    seed: int = 7,
) -> int:
    import uvicorn

    from api import ApiServer, create_app
    from api.limits import ApiLimits
    from cargowatch.runtime import Runtime
    from simulators import build_fleet, publish

    for noisy in ("amqtt", "transitions", "aiomqtt", "paho"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Checked before anything is created: a bad address or a port in use is one line.
    host, port = split_host_port(http)
    sock = listen_socket(host, port)
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(db_path + suffix).unlink(missing_ok=True)
        mqtt_port = _free_port()
        broker = await start_embedded_broker(mqtt_port)
    except BaseException:
        sock.close()
        raise
    admin_key = "cw_demo_" + secrets.token_urlsafe(12)
    clock = ScaledClock(speed=speed)
    settings = Settings(
        mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
        db_url=f"sqlite:///{db_path}",
        http=http,
        admin_key=admin_key,
        mqtt_protocol="3.1.1",
        client_id="cargowatch-demo",
        batch_ms=100,
    )
    runtime = Runtime.open(settings, clock=clock)
    incidents = DEMO_INCIDENTS[: max(0, min(len(DEMO_INCIDENTS), trucks - 2))]
    fleet = build_fleet(trucks, seed=seed, start_ms=clock.now_ms() + 30_000, incidents=incidents)
    for sim in fleet:
        for device in sim.devices:
            runtime.register_device(device)
        for fence in sim.geofences:
            runtime.put_geofence(fence)
        runtime.create_trip(sim.trip)

    app = create_app(runtime, limits=ApiLimits.of(settings))
    server = ApiServer(
        uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning")
    )
    url = f"http://{settings.http_host}:{settings.http_port}/"
    print(f"cargowatch demo: desk at {url}", file=sys.stderr)
    print(f"admin API key: {admin_key}", file=sys.stderr)
    print(f"embedded MQTT broker: mqtt://127.0.0.1:{mqtt_port}; store: {db_path}", file=sys.stderr)
    print(
        f"{trucks} simulated trucks, time x{speed:g}, incidents: {', '.join(incidents)}",
        file=sys.stderr,
    )
    published: dict[str, Any] = {"trucks": trucks}
    started = time.monotonic()

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            print(_summary(runtime, published, started), file=sys.stderr, flush=True)

    async def simulate() -> None:
        # Let the API's lifespan start the engine and subscribe before trucks talk.
        while not runtime.started:
            await asyncio.sleep(0.05)
        assert settings.mqtt_url is not None  # the demo always runs its embedded broker
        stats = await publish(fleet, settings.mqtt_url, speed=speed, clock=clock, qos=1)
        published.update(stats)
        print(f"[demo] fleet finished: {stats}", file=sys.stderr)

    async def stop_after() -> None:
        if duration_s is not None:
            await asyncio.sleep(duration_s)
            server.should_exit = True

    try:
        async with asyncio.TaskGroup() as tg:
            serve_task = tg.create_task(server.serve(sockets=[sock]))
            helpers = [tg.create_task(t) for t in (report(), simulate(), stop_after())]
            await serve_task
            for t in helpers:
                t.cancel()
    finally:
        # Also on Ctrl-C: uvicorn re-raises SIGINT after its graceful shutdown and
        # asyncio.run then cancels this task; the clean-up below still runs.
        runtime.close()
        sock.close()
        with contextlib.suppress(Exception):
            await broker.shutdown()
        print("[demo] stopped cleanly", file=sys.stderr)
    return 0


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the embedded broker)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
