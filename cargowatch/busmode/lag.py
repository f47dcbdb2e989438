"""How far behind each stage of the partitioned engine is, read from the partition consumers.

Stage 1 (``DEVICES``: messages not yet validated and re-keyed) and stage 2 (``TRIPS``: re-keyed
messages not yet evaluated) are both backlog: a truck whose fix waits in either stream is not
silent. Three readers use this:

- the wall-clock rules of a trip partition (``worker``): with device messages waiting anywhere,
  a trip partition may only judge up to the receive time of the oldest of them — any device
  partition may hold a message of any trip, and a trip partition that gets no messages meanwhile
  has no receive time of its own to stop at (``device_horizon``);
- ``/healthz`` (``reasons``) and the metrics of ``serve --bus`` (``LagMonitor``).

A partition whose consumer does not exist yet (no worker ever claimed it) is read from the
start of the stream: its messages wait too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.clock import Clock, ScaledClock
from telemetry.bus.streams import DEVICE_STREAM, TRIP_STREAM, stream_name

log = logging.getLogger(__name__)

STAGES = {"devices": DEVICE_STREAM, "trips": TRIP_STREAM}
REPORT_WAITING = 1000
"""``/healthz`` says ``degraded`` when a stage has at least this many messages not yet delivered
to its workers (one full batch beyond the ones in flight): a few in transit are normal."""
READ_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    waiting: int  # in the stream, not yet delivered to the partition's worker
    in_flight: int  # delivered, not yet acknowledged
    oldest_ms: int | None = None  # server receive time (Unix ms) of the oldest unacknowledged

    @property
    def behind(self) -> bool:
        return bool(self.waiting or self.in_flight)


async def _oldest_ms(
    js: JetStreamContext, stream: str, filters: Iterable[str | None], after: int
) -> int | None:
    """Server time of the first message past ``after`` on any of ``filters`` (None: none;
    a ``None`` filter: any subject)."""
    times = []
    for subject in filters:
        with contextlib.suppress(NotFoundError):
            raw = await js.get_msg(stream, seq=after + 1, subject=subject, next=True)
            if raw.time is not None:
                times.append(int(raw.time.timestamp() * 1000))
    return min(times, default=None)


async def read_partition(
    js: JetStreamContext, stage: str, n: int, *, oldest: bool = False
) -> PartitionLag:
    """One partition's lag; ``oldest``: also the receive time of its oldest waiting message.
    Raises (a NATS error, a timeout) when it cannot be read: callers count that as behind."""
    stream = stream_name(STAGES[stage], n)
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            info = await js.consumer_info(stream, f"p{n}")
    except NotFoundError:  # never claimed: everything of the partition waits
        async with asyncio.timeout(READ_TIMEOUT_S):
            first = await _oldest_ms(js, stream, [None], 0)
        if first is None:
            return PartitionLag(0, 0)
        return PartitionLag(1, 0, first)  # how many is unknown without a scan; at least one
    lag = PartitionLag(info.num_pending or 0, info.num_ack_pending or 0)
    if oldest and lag.behind:
        # the partition's stream holds it alone: the message after the floor is its oldest
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        async with asyncio.timeout(READ_TIMEOUT_S):
            at = await _oldest_ms(js, stream, [None], floor or 0)
        lag = PartitionLag(lag.waiting, lag.in_flight, at)
    return lag


async def read_stage(
    js: JetStreamContext, stage: str, partitions: Sequence[int], *, oldest: bool = False
) -> dict[int, PartitionLag | None]:
    """Every listed partition's lag, read concurrently; ``None`` where it could not be read."""

    async def one(n: int) -> PartitionLag | None:
        try:
            return await read_partition(js, stage, n, oldest=oldest)
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("lag of %s partition %d unreadable: %s", stage, n, exc)
            return None

    values = await asyncio.gather(*(one(n) for n in partitions))
    return dict(zip(partitions, values, strict=True))


def to_clock_ms(server_ms: int, clock: Clock) -> int:
    """A server time (real Unix ms) on ``clock``: the same for a real clock; an accelerated
    one (simulations) is read now and moved back by the real time since, times its speed."""
    if not isinstance(clock, ScaledClock):
        return server_ms
    real_now = time.time_ns() // 1_000_000
    return clock.now_ms() - int(max(0, real_now - server_ms) * clock.speed)


SKEW_HOLD_MS = 20_000
"""Stage 1 holds a device partition's batch while its oldest message was received more than
this after the oldest message waiting in any other device partition. A trip's devices sit
in different device partitions; unbounded, one partition running ahead of another by more
than the rules' cross-device skew (60 s) makes every batch of a lagging device rewind its
trip — under load that multiplied the cost per message and the backlog ran away."""


def ahead_of_others(
    n: int, oldest_ms: int, lags: dict[int, PartitionLag | None], hold_ms: int = SKEW_HOLD_MS
) -> bool:
    """Whether device partition ``n``'s batch, whose oldest message the server received at
    ``oldest_ms``, is more than ``hold_ms`` ahead of another partition's oldest waiting one.
    The partition furthest behind is never ahead, so some partition always proceeds."""
    others = [
        lag.oldest_ms
        for k, lag in lags.items()
        if k != n and lag is not None and lag.behind and lag.oldest_ms is not None
    ]
    return bool(others) and oldest_ms > min(others) + hold_ms


async def device_lags(js: JetStreamContext, partitions: int) -> dict[int, PartitionLag | None]:
    """Every device partition's lag with its oldest waiting message's server time."""
    return await read_stage(js, "devices", range(partitions), oldest=True)


async def device_horizon(js: JetStreamContext, partitions: int, clock: Clock) -> int:
    """The time on ``clock`` up to which every device message received has been re-keyed:
    read now when no device partition is behind, else the receive time of the oldest message
    still waiting in stage 1 (a partition that cannot be read holds the horizon where it is:
    the caller keeps the previous one)."""
    return horizon_of(await device_lags(js, partitions), clock)


def horizon_of(lags: dict[int, PartitionLag | None], clock: Clock) -> int:
    """``device_horizon`` of lags already read."""
    now = clock.now_ms()
    horizon = now
    for lag in lags.values():
        if lag is None:
            raise LookupError("a device partition's lag could not be read")
        if lag.behind and lag.oldest_ms is not None:
            horizon = min(horizon, to_clock_ms(lag.oldest_ms, clock) - 1)
    return horizon


class LagMonitor:
    """``serve --bus``: reads both stages every ``period_s`` for ``/healthz`` and the metrics
    (both synchronous, so they show the last reading rather than asking NATS themselves)."""

    def __init__(self, period_s: float = 1.0) -> None:
        self.period_s = period_s
        self.partitions: dict[str, int] = {"devices": 0, "trips": 0}
        self.lags: dict[str, dict[int, PartitionLag | None]] = {"devices": {}, "trips": {}}
        self.read_at: float | None = None  # time.monotonic() of the last complete reading

    async def run(self, js: JetStreamContext, partitions: int, trip_partitions: int) -> None:
        self.partitions = {"devices": partitions, "trips": trip_partitions}
        while True:
            try:
                for stage, count in self.partitions.items():
                    self.lags[stage] = await read_stage(js, stage, range(count))
                self.read_at = time.monotonic()
            except Exception:  # never take serve down: the reading goes stale (a reason)
                log.exception("reading the bus lag failed")
            await asyncio.sleep(self.period_s)

    def waiting(self, stage: str) -> int:
        return sum(lag.waiting for lag in self.lags[stage].values() if lag is not None)

    def in_flight(self, stage: str) -> int:
        return sum(lag.in_flight for lag in self.lags[stage].values() if lag is not None)

    def reasons(self) -> list[str]:
        """What ``/healthz`` adds to its ``reasons``: each stage too far behind, unreadable,
        or not read for a while."""
        if self.read_at is None:
            return []  # not read yet: the first reading follows within a period
        out = []
        if time.monotonic() - self.read_at > max(10.0, 5 * self.period_s):
            out.append("bus lag unknown: the stream consumers were not read for 10 s")
        for stage, what in (
            ("devices", "device messages waiting to be validated and re-keyed"),
            ("trips", "re-keyed messages waiting for the engine"),
        ):
            unreadable = [n for n, lag in self.lags[stage].items() if lag is None]
            if unreadable:
                out.append(f"bus lag unknown: {stage} partitions {unreadable} unreadable")
            waiting = self.waiting(stage)
            if waiting >= REPORT_WAITING:
                out.append(f"backlog: {waiting} {what}")
        return out

    def bind(self, registry: CollectorRegistry) -> None:
        """Export ``cargowatch_bus_pending_messages{stage}`` (waiting + in flight) and
        ``cargowatch_bus_partitions_behind{stage}`` in ``registry``."""
        registry.register(_LagCollector(self))


class _LagCollector(Collector):
    def __init__(self, monitor: LagMonitor) -> None:
        self.monitor = monitor

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        m = self.monitor
        if m.read_at is None:
            return
        pending = GaugeMetricFamily(
            "cargowatch_bus_pending_messages",
            "Messages of a bus stage not yet acknowledged (waiting or in flight), by stage",
            labels=["stage"],
        )
        behind = GaugeMetricFamily(
            "cargowatch_bus_partitions_behind",
            "Partitions of a bus stage with messages not yet acknowledged, by stage",
            labels=["stage"],
        )
        for stage in ("devices", "trips"):
            pending.add_metric([stage], float(m.waiting(stage) + m.in_flight(stage)))
            lags = m.lags[stage].values()
            behind.add_metric([stage], float(sum(1 for x in lags if x is None or x.behind)))
        yield pending
        yield behind
