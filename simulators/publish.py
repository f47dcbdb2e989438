"""Publishing simulated trips over MQTT (aiomqtt), paced on event time, rate limited,
reconnecting.

Pacing: a message is sent when the simulated clock reaches its ``at_ms``. The clock is the
caller's (a ``ScaledClock`` shared with the engine in the demo, a ``ManualClock`` in tests —
publishing then waits for the test to advance it) or, by default, one that starts at the
first message and runs ``speed`` times faster than real time. ``speed=math.inf`` (or ≤ 0)
drops pacing: messages go out as fast as ``rate_limit`` allows (load tests).

Rate: at most ``rate_limit`` messages per real second, evenly spread (no catch-up bursts of
more than a quarter second's worth after a stall).

Delivery: up to ``max_inflight`` QoS-1 publishes are awaiting their PUBACK at once (one at a
time would cap the rate at one round trip per message). The reconnect loop lives here, as
aiomqtt recommends: on a broken connection the unconfirmed messages are sent again, in
order, after reconnecting (at-least-once; ingest de-duplicates by device, ``ts`` and ``seq``).
The publisher gives up with :class:`PublishError` after ``give_up_s`` without a connection
that gets anything through.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import aiomqtt
import httpx
import orjson

from core.clock import Clock, ScaledClock
from simulators.errors import PublishError, SimulatorError
from simulators.fleet import build_fleet, iter_fleet_messages
from simulators.model import SimMessage, SimTrip
from simulators.scenarios import INCIDENTS, build_scenario

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and how to connect."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]`` (also ``tcp://``), ``mqtts://`` for TLS
    (default port 8883), or a bare ``host[:port]``."""
    if "://" not in url:
        url = "mqtt://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
        raise PublishError("unsupported MQTT URL scheme", url=url, scheme=parts.scheme)
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise PublishError("bad port in MQTT URL", url=url) from exc
    if not parts.hostname:
        raise PublishError("no host in MQTT URL", url=url)
    return BrokerAddress(
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        tls,
    )


class _Pacer:
    """Waits for event time (the clock) and for the rate limit (real time)."""

    def __init__(self, clock: Clock | None, rate_limit: float | None) -> None:
        self.clock = clock
        self.rate = rate_limit if rate_limit and rate_limit > 0 else None
        self.t0 = time.monotonic()
        self.sent = 0

    async def wait(self, at_ms: int) -> None:
        if self.clock is not None:
            while (now := self.clock.now_ms()) < at_ms:
                await self.clock.sleep(min((at_ms - now) / 1000.0, 0.5))
                if self.clock.now_ms() == now:
                    # a manual clock: it only moves when the test advances it
                    await asyncio.sleep(0.005)
        if self.rate is not None:
            due = self.t0 + self.sent / self.rate
            now_r = time.monotonic()
            if due - now_r > 0.002:
                await asyncio.sleep(due - now_r)
            elif now_r - due > 0.25:
                # after a stall, do not burst to catch up
                self.t0 = now_r - self.sent / self.rate
        self.sent += 1


class _Stats:
    def __init__(self, progress: Progress | None, every_s: float) -> None:
        self.progress = progress
        self.every_s = every_s
        self.start = time.monotonic()
        self.published = 0
        self.reconnects = 0
        self.event_ms = 0
        self.lag_ms = 0
        self._last_t = self.start
        self._last_n = 0

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        secs = now - self.start
        return {
            "published": self.published,
            "seconds": round(secs, 3),
            "rate": round(self.published / secs, 1) if secs > 0 else 0.0,
            "reconnects": self.reconnects,
            "event_ms": self.event_ms,
            "lag_ms": self.lag_ms,
        }

    def tick(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_t < self.every_s:
            return
        snap = self.snapshot()
        span = now - self._last_t
        snap["rate"] = round((self.published - self._last_n) / span, 1) if span > 0 else 0.0
        self._last_t, self._last_n = now, self.published
        self.progress(snap)


async def publish(
    trips: Sequence[SimTrip],
    mqtt_url: str,
    *,
    speed: float = 60.0,
    rate_limit: float | None = None,
    clock: Clock | None = None,
    qos: int = 1,
    progress: Progress | None = None,
    prefix: str = "devices",
    max_inflight: int = 64,
    give_up_s: float = 60.0,
    progress_every_s: float = 1.0,
) -> dict[str, Any]:
    """Publish every message of ``trips`` in ``at_ms`` order (see the module docstring).
    Returns ``{"published", "seconds", "rate", "reconnects", "event_ms", "lag_ms"}``;
    ``progress`` gets the same dict about once a second (``rate`` over the last interval)."""
    return await publish_messages(
        iter_fleet_messages(trips),
        mqtt_url,
        speed=speed,
        rate_limit=rate_limit,
        clock=clock,
        qos=qos,
        progress=progress,
        prefix=prefix,
        max_inflight=max_inflight,
        give_up_s=give_up_s,
        progress_every_s=progress_every_s,
    )


async def publish_messages(
    messages: Iterator[SimMessage],
    mqtt_url: str,
    *,
    speed: float = 60.0,
    rate_limit: float | None = None,
    clock: Clock | None = None,
    qos: int = 1,
    progress: Progress | None = None,
    prefix: str = "devices",
    max_inflight: int = 64,
    give_up_s: float = 60.0,
    progress_every_s: float = 1.0,
) -> dict[str, Any]:
    """:func:`publish` for any stream of messages already in ``at_ms`` order."""
    addr = parse_mqtt_url(mqtt_url)
    if qos not in (0, 1, 2):
        raise PublishError("qos must be 0, 1 or 2", qos=qos)
    source = iter(messages)
    first = next(source, None)
    stats = _Stats(progress, progress_every_s)
    if first is None:
        return stats.snapshot()
    if clock is None and math.isfinite(speed) and speed > 0:
        clock = ScaledClock(speed=speed, start_ms=first.at_ms)
    elif not (math.isfinite(speed) and speed > 0):
        clock = None
    pacer = _Pacer(clock, rate_limit)
    todo: deque[SimMessage] = deque([first])  # taken from the source, not yet handed over
    inflight: dict[int, SimMessage] = {}  # handed to a publish, not yet confirmed
    ids = itertools.count()
    failing_since: float | None = None
    error: BaseException
    backoff = 0.2
    ident = f"cargowatch-sim-{os.getpid()}-{id(stats) & 0xFFFF:x}"

    async def one(client: aiomqtt.Client, k: int, msg: SimMessage, sem: asyncio.Semaphore) -> None:
        try:
            await client.publish(msg.topic(prefix), msg.payload, qos=qos)
            del inflight[k]
            stats.published += 1
        finally:
            sem.release()

    while True:
        before = stats.published
        try:
            async with aiomqtt.Client(
                addr.host,
                addr.port,
                username=addr.username,
                password=addr.password,
                identifier=ident,
                clean_session=True,
                timeout=10.0,
                max_inflight_messages=max_inflight,
                tls_params=aiomqtt.TLSParameters() if addr.tls else None,
            ) as client:
                # many publishes awaiting PUBACK is the point, not a problem to warn about
                client.pending_calls_threshold = max_inflight + 1
                if inflight:
                    # unconfirmed before the break: again, first, in their order
                    todo.extendleft(reversed([inflight[k] for k in sorted(inflight)]))
                    inflight.clear()
                sem = asyncio.Semaphore(max_inflight)
                async with asyncio.TaskGroup() as tg:
                    while True:
                        if not todo:
                            nxt = next(source, None)
                            if nxt is None:
                                break
                            todo.append(nxt)
                        msg = todo[0]
                        await pacer.wait(msg.at_ms)
                        await sem.acquire()
                        todo.popleft()
                        k = next(ids)
                        inflight[k] = msg
                        tg.create_task(one(client, k, msg, sem))
                        stats.event_ms = msg.at_ms
                        if clock is not None:
                            stats.lag_ms = max(clock.now_ms() - msg.at_ms, 0)
                        stats.tick()
            break
        except (aiomqtt.MqttError, OSError) as exc:
            error = exc
        except ExceptionGroup as group:
            lost, rest = group.split((aiomqtt.MqttError, OSError))
            if rest is not None or lost is None:
                raise
            error = _first_leaf(lost)
        now = time.monotonic()
        if stats.published > before or failing_since is None:
            # count from the last time anything got through
            failing_since = now
            if stats.published > before:
                backoff = 0.2
        if now - failing_since > give_up_s:
            raise PublishError("MQTT broker unreachable", url=mqtt_url, error=str(error)) from error
        stats.reconnects += 1
        log.warning("MQTT connection lost (%s); reconnecting in %.1f s", error, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
    stats.tick(force=True)
    return stats.snapshot()


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def device_document(dev: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /v1/devices`` body of a simulated device: a unit publishing both topics is
    a ``combo``."""
    topics = set(dev.get("topics") or ())
    kind = "combo" if {"position", "lock"} <= topics else dev["kind"]
    doc = {"device_id": dev["device_id"], "kind": kind}
    if dev.get("shipper"):
        doc["shipper"] = dev["shipper"]
    return doc


async def register(
    trips: Sequence[SimTrip],
    api_url: str,
    api_key: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, int]:
    """POST the trips' devices, geofences and trips to the API (``/v1/devices``,
    ``/v1/geofences``, ``/v1/trips``). An object that already exists (409) counts as done.
    Returns counts of what was created."""
    counts = {"devices": 0, "geofences": 0, "trips": 0, "existing": 0}
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(
        base_url=api_url.rstrip("/"), headers=headers, transport=transport, timeout=30.0
    ) as http:

        async def post(path: str, body: dict, key: str) -> None:
            resp = await http.post(
                path, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
            )
            if resp.status_code == 409:
                counts["existing"] += 1
            elif resp.is_success:
                counts[key] += 1
            else:
                raise SimulatorError(
                    "API refused a simulated object",
                    path=path,
                    status=resp.status_code,
                    body=resp.text[:300],
                )

        for t in trips:
            for dev in t.devices:
                await post("/v1/devices", device_document(dev), "devices")
            for g in t.geofences:
                await post("/v1/geofences", g, "geofences")
            await post("/v1/trips", t.trip, "trips")
    return counts


def build_for_cli(trucks: int, scenario: str, seed: int, start_ms: int) -> list[SimTrip]:
    """What ``cargowatch simulate`` runs: ``mixed`` = normal trips with one of each incident
    (as many as fit); ``normal`` = ``trucks`` normal trips; any other scenario = ``trucks``
    trips of it (a single one built with :func:`build_scenario`)."""
    if trucks < 1:
        raise SimulatorError("trucks must be at least 1", trucks=trucks)
    if scenario == "mixed":
        return build_fleet(trucks, seed=seed, start_ms=start_ms, incidents=INCIDENTS[:trucks])
    if scenario == "normal":
        return build_fleet(trucks, seed=seed, start_ms=start_ms)
    if trucks == 1:
        return [build_scenario(scenario, seed=seed, start_ms=start_ms)]
    return build_fleet(trucks, seed=seed, start_ms=start_ms, incidents=[scenario] * trucks)


def trip_bundle(trip: SimTrip) -> dict[str, Any]:
    """One JSON line of ``--trips-out``: the trip document and what goes with it."""
    return {
        "scenario": trip.scenario,
        "trip": trip.trip,
        "devices": trip.devices,
        "geofences": trip.geofences,
        "expected": trip.expected,
        "expected_dead_letters": trip.expected_dead_letters,
        "marks": trip.marks,
    }


async def run_cli(
    mqtt_url: str,
    trucks: int,
    scenario: str,
    speed: float,
    rate: float | None,
    seed: int,
    *,
    trips_out: str | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    start_ms: int | None = None,
    prefix: str = "devices",
    clock: Clock | None = None,
    stream: TextIO | None = None,
    give_up_s: float = 60.0,
) -> int:
    """``cargowatch simulate``: build, optionally write the trips as JSON lines to
    ``trips_out`` and register them with the API, then publish with progress lines on
    ``stream`` (stderr). Returns an exit code: 0 done, 1 publishing failed, 2 bad input.

    Messages carry simulated event times starting at ``start_ms`` (default: now) and running
    ``speed`` times faster than real time; the engine must share that clock (as the demo
    does), else with ``speed`` > 1 it soon sees timestamps from the future."""
    out = stream if stream is not None else sys.stderr
    t0 = (
        start_ms if start_ms is not None else (clock.now_ms() if clock else int(time.time() * 1000))
    )
    try:
        trips = build_for_cli(trucks, scenario, seed, t0)
    except SimulatorError as exc:
        print(f"simulate: {exc}", file=out)
        return 2
    n_alarms = sum(len(t.expected) for t in trips)
    print(
        f"simulate: {len(trips)} trips ({scenario}), {n_alarms} alarms expected, "
        f"speed x{speed:g}, rate limit {rate or 'none'}",
        file=out,
    )
    if speed != 1 and clock is None:
        print(
            "simulate: note: event time runs faster than real time; the engine must run on "
            "the same scaled clock",
            file=out,
        )
    if trips_out:
        with open(trips_out, "wb") as fh:
            for t in trips:
                fh.write(orjson.dumps(trip_bundle(t)) + b"\n")
        print(f"simulate: trips written to {trips_out}", file=out)
    try:
        if api_url:
            if not api_key:
                print("simulate: --api needs an API key", file=out)
                return 2
            counts = await register(trips, api_url, api_key)
            print(f"simulate: registered {counts}", file=out)

        def show(p: dict[str, Any]) -> None:
            # behind the event clock by more than a day only means "as fast as allowed"
            lag = f"{p['lag_ms'] / 1000:.1f} s" if p["lag_ms"] < 86_400_000 else "n/a"
            print(
                f"simulate: {p['published']} published, {p['rate']:.0f} msg/s, "
                f"lag {lag}, reconnects {p['reconnects']}",
                file=out,
                flush=True,
            )

        stats = await publish(
            trips,
            mqtt_url,
            speed=speed,
            rate_limit=rate,
            clock=clock,
            prefix=prefix,
            progress=show,
            give_up_s=give_up_s,
        )
    except (SimulatorError, httpx.HTTPError) as exc:
        print(f"simulate: {exc}", file=out)
        return 1
    print(
        f"simulate: done: {stats['published']} messages in {stats['seconds']:.1f} s "
        f"({stats['rate']:.0f} msg/s)",
        file=out,
    )
    return 0
