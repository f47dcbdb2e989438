"""Stage lag (``busmode.lag``) on a real nats-server: device messages not yet re-keyed hold the
wall-clock rules' horizon back and show as backlog in ``/healthz`` reasons and the metrics,
and stop doing so once they are consumed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import nats
from prometheus_client import CollectorRegistry

from cargowatch.busmode.lag import (
    REPORT_WAITING,
    SKEW_HOLD_MS,
    LagMonitor,
    PartitionLag,
    ahead_of_others,
    device_horizon,
    read_stage,
)
from core.clock import SystemClock
from telemetry.bus.consumer import BusMessage, PartitionConsumer, consumer_config
from telemetry.bus.partitions import PART_PREFIX, partition_of
from telemetry.bus.streams import DEVICE_STREAM, GIB, StreamLimits, ensure_streams, stream_name
from tests.nats_service import NatsServer

P = 4
DEVICE = "lag.gps:1"


async def scenario(url: str) -> dict[str, object]:
    out: dict[str, object] = {}
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        limits = StreamLimits(3600.0, GIB // 4)
        await ensure_streams(js, limits, limits)
        n = partition_of(DEVICE, P)
        clock = SystemClock()
        out["idle"] = await device_horizon(js, P, clock) >= clock.now_ms() - 1000
        before = clock.now_ms()
        for _ in range(REPORT_WAITING + 5):
            await nc.publish(f"devices.{DEVICE.replace('.', '//')}.position", b"{}")
        await nc.flush()
        await asyncio.sleep(0.2)
        # never claimed: no consumer yet, the partition's messages wait all the same
        lags = await read_stage(js, "devices", range(P), oldest=True)
        out["unclaimed_behind"] = [k for k, lag in lags.items() if lag and lag.behind]
        horizon = await device_horizon(js, P, clock)
        out["held_unclaimed"] = before - 1000 <= horizon < clock.now_ms() - 100
        # a worker's durable exists but has read nothing: REPORT_WAITING+ messages waiting
        await js.add_consumer(stream_name(DEVICE_STREAM, n), consumer_config(f"p{n}", ()))
        monitor = LagMonitor(period_s=0.1)
        registry = CollectorRegistry()
        monitor.bind(registry)
        task = asyncio.create_task(monitor.run(js, P, P))
        await asyncio.sleep(0.5)
        out["reasons_behind"] = monitor.reasons()
        out["pending_behind"] = registry.get_sample_value(
            "cargowatch_bus_pending_messages", {"stage": "devices"}
        )
        out["held_claimed"] = await device_horizon(js, P, clock) < clock.now_ms() - 100
        seen: list[int] = []

        async def handle(batch: Sequence[BusMessage]) -> None:
            seen.extend(m.stream_seq for m in batch)

        consumer = PartitionConsumer(js, DEVICE_STREAM, PART_PREFIX, n, handle)
        await consumer.start()
        deadline = time.monotonic() + 20
        while len(seen) < REPORT_WAITING + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the acknowledgement, then a reading
        out["reasons_drained"] = monitor.reasons()
        out["pending_drained"] = registry.get_sample_value(
            "cargowatch_bus_pending_messages", {"stage": "devices"}
        )
        out["free"] = await device_horizon(js, P, clock) >= clock.now_ms() - 1000
        await consumer.stop()
        task.cancel()
    finally:
        await nc.close()
    return out


def test_device_stage_lag_is_backlog_until_consumed(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", partitions=P) as srv:
        out = asyncio.run(scenario(srv.url))
    n = partition_of(DEVICE, P)
    assert out["idle"] is True
    assert out["unclaimed_behind"] == [n]
    assert out["held_unclaimed"] is True
    reasons = out["reasons_behind"]
    assert isinstance(reasons, list)
    assert any("backlog" in r and "re-keyed" in r for r in reasons), reasons
    assert out["pending_behind"] == REPORT_WAITING + 5
    assert out["held_claimed"] is True
    assert out["reasons_drained"] == []
    assert out["pending_drained"] == 0
    assert out["free"] is True


def test_a_device_partition_ahead_of_another_by_more_than_the_hold_waits() -> None:
    """Stage 1's skew bound: a batch waits while its oldest message was received more than
    SKEW_HOLD_MS after another partition's oldest waiting one; the partition furthest behind
    always proceeds, idle or unreadable partitions hold nothing back."""
    t = 1_795_334_400_000
    lags: dict[int, PartitionLag | None] = {
        0: PartitionLag(500, 100, t),  # furthest behind
        1: PartitionLag(10, 10, t + 25_000),
        2: PartitionLag(0, 0, None),  # idle
        3: None,  # unreadable
    }
    assert ahead_of_others(1, t + 25_000, lags) is True
    assert ahead_of_others(1, t + SKEW_HOLD_MS, lags) is False  # at the bound: proceeds
    assert ahead_of_others(0, t, lags) is False  # the one behind is never held
    assert ahead_of_others(2, t + 10**6, {2: PartitionLag(5, 0, t), 3: None}) is False
    assert ahead_of_others(1, t + 25_000, {**lags, 0: PartitionLag(0, 0, t)}) is False
