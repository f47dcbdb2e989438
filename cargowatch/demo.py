"""``cargowatch demo``: the main job on embedded defaults.

An in-process MQTT broker (amqtt, a demo broker only), a SQLite file, a simulated fleet with a
few incidents on accelerated time, the engine and the API with its desk page. Prints the URL,
an admin key, the pace and a live summary until Ctrl-C.

The pace (``DEMO_SPEED``, x3) is one a person can work at: a critical alarm's 10-minute
acknowledge deadline lasts 3 min 20 s of real time, a major one's 30 minutes 10 min. The
fleet is kept going (:class:`FleetKeeper`): as trips complete, new ones are created, each
wave with one incident, so the desk never runs out of trucks or alarms. The first wave
started ``WARMUP_MS`` simulated minutes before the demo, so the first incidents show within
a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cargowatch.listen import listen_socket
from cargowatch.settings import Settings, split_host_port
from core.clock import ScaledClock

if TYPE_CHECKING:  # the engine is imported when the demo runs, not for `--help`
    from amqtt.broker import Broker

    from cargowatch.runtime import Runtime
    from simulators.model import SimTrip

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


DEMO_SPEED = 3.0  # simulated seconds per real second (see the module docstring)
WARMUP_MS = 13 * 60_000  # the first wave is this far into its trips when the demo starts
MIN_MS = 60_000


def pace_text(speed: float) -> str:
    """The line the demo prints about its pace: what a deadline lasts in real time."""
    critical_s = 10 * 60 / speed
    m, sec = divmod(round(critical_s), 60)
    lasts = f"{m} min {sec:02d} s" if m else f"{sec} s"
    return (
        f"pace x{speed:g}: 1 real minute = {speed:g} simulated minutes; "
        f"a critical alarm's 10-minute acknowledge deadline lasts {lasts} of real time"
    )


@dataclass
class FleetKeeper:
    """Keeps about ``target`` trips on the road. :meth:`top_up` is asked now and then with
    the engine's active trips; when enough of its trips have completed it builds a new wave
    (new trip and device ids) starting ``lead_ms`` from now, with one incident of
    ``incidents`` in turn. The first wave has all of them and starts ``warmup_ms`` early."""

    target: int
    seed: int
    incidents: Sequence[str]
    lead_ms: int = 30_000
    warmup_ms: int = WARMUP_MS
    grace_ms: int = 15 * MIN_MS  # a planned trip counts as on the road this long past its start
    waves: int = 0
    planned: dict[str, int] = field(default_factory=dict)  # trip_id -> planned start (ms)

    def in_play(self, active: Collection[str], now_ms: int) -> int:
        """This keeper's trips that are active, or planned and not long past their start."""
        return sum(
            1 for t, start in self.planned.items() if t in active or now_ms < start + self.grace_ms
        )

    def top_up(self, active: Collection[str], now_ms: int) -> list[SimTrip]:
        """The trips of a new wave ([] while the fleet is full enough)."""
        from simulators import build_fleet

        missing = self.target - self.in_play(active, now_ms)
        if self.waves and missing < max(1, self.target // 8):
            return []  # no wave of one truck each time one completes
        if missing <= 0:
            return []
        if self.waves == 0:
            incidents = list(self.incidents[: max(0, min(len(self.incidents), missing - 2))])
            start, stagger, prefix = now_ms - self.warmup_ms, 1800.0, ""
        else:
            incidents = (
                [self.incidents[(self.waves - 1) % len(self.incidents)]] if self.incidents else []
            )
            start, stagger, prefix = now_ms + self.lead_ms, 600.0, f"w{self.waves}-"
        fleet = build_fleet(
            missing,
            seed=self.seed + 1000 * self.waves,  # trip ids carry the seed: unique per wave
            start_ms=start,
            incidents=incidents,
            stagger_s=stagger,
            device_prefix=prefix,
        )
        # Completed trips are forgotten; the new ones counted from now on.
        self.planned = {
            t: s for t, s in self.planned.items() if t in active or now_ms < s + self.grace_ms
        }
        for sim in fleet:
            self.planned[sim.trip_id] = int(sim.marks.get("planned_start", start))
        self.waves += 1
        return fleet


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
    speed: float = DEMO_SPEED,
    db_path: str = "cargowatch-demo.sqlite",
    duration_s: float | None = None,
    seed: int = 7,
) -> int:
    import uvicorn

    from api import ApiServer, create_app
    from api.limits import ApiLimits
    from cargowatch.runtime import Runtime
    from simulators import publish

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
    keeper = FleetKeeper(target=trucks, seed=seed, incidents=DEMO_INCIDENTS)
    fleet = keeper.top_up((), clock.now_ms())
    incidents = sorted({sim.scenario for sim in fleet} - {"normal"})

    def register(wave: list[SimTrip]) -> None:
        for sim in wave:
            for device in sim.devices:
                runtime.register_device(device)
            for fence in sim.geofences:
                runtime.put_geofence(fence)
            runtime.create_trip(sim.trip)

    register(fleet)

    app = create_app(runtime, limits=ApiLimits.of(settings))
    server = ApiServer(
        uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning")
    )
    url = f"http://{settings.http_host}:{settings.http_port}/"
    print(f"cargowatch demo: desk at {url}", file=sys.stderr)
    print(f"admin API key: {admin_key}", file=sys.stderr)
    print(f"embedded MQTT broker: mqtt://127.0.0.1:{mqtt_port}; store: {db_path}", file=sys.stderr)
    print(
        f"{trucks} simulated trucks, kept going (new trips as trips complete); "
        f"incidents: {', '.join(incidents)}",
        file=sys.stderr,
    )
    print(pace_text(speed), file=sys.stderr)
    published: dict[str, Any] = {"trucks": trucks}
    started = time.monotonic()

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            print(_summary(runtime, published, started), file=sys.stderr, flush=True)

    async def simulate(wave: list[SimTrip]) -> None:
        # Let the API's lifespan start the engine and subscribe before trucks talk.
        while not runtime.started:
            await asyncio.sleep(0.05)
        assert settings.mqtt_url is not None  # the demo always runs its embedded broker
        stats = await publish(wave, settings.mqtt_url, speed=speed, clock=clock, qos=1)
        published["messages"] = published.get("messages", 0) + stats.get("published", 0)

    publishers: list[asyncio.Task[None]] = []  # cancelled with the helpers at the end

    async def keep_going(tg: asyncio.TaskGroup) -> None:
        publishers.append(tg.create_task(simulate(fleet)))
        while True:
            await asyncio.sleep(5)
            active = set(runtime.engine.active_trips())
            wave = keeper.top_up(active, clock.now_ms())
            if wave:
                register(wave)
                published["trucks"] = published.get("trucks", 0) + len(wave)
                extra = sorted({sim.scenario for sim in wave} - {"normal"})
                print(
                    f"[demo] {len(wave)} new trips (wave {keeper.waves}"
                    f"{', incident: ' + ', '.join(extra) if extra else ''})",
                    file=sys.stderr,
                )
                publishers.append(tg.create_task(simulate(wave)))

    async def stop_after() -> None:
        if duration_s is not None:
            await asyncio.sleep(duration_s)
            server.should_exit = True

    try:
        async with asyncio.TaskGroup() as tg:
            serve_task = tg.create_task(server.serve(sockets=[sock]))
            helpers = [tg.create_task(t) for t in (report(), keep_going(tg), stop_after())]
            await serve_task
            for t in [*helpers, *publishers]:
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
