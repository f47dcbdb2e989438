"""Partition leases in a JetStream key-value bucket, against a real nats-server: one worker
takes every partition, a second one joins and they split, a killed worker's partitions are
taken over within 15 s, a worker cut off from the server stops before its leases expire, and
never do two workers own one partition at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client

from telemetry.bus.leases import PartitionLeases, lease_bucket
from tests.nats_service import NatsServer

P = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats"), partitions=P) as srv:
        yield srv


@dataclass
class Span:
    owner: str
    start: float
    end: float | None = None  # None while owned


@dataclass
class ClaimLog:
    """Ownership intervals per partition, from the workers' acquired/lost callbacks."""

    intervals: dict[int, list[Span]] = field(default_factory=dict)

    def acquired(self, owner: str, n: int) -> None:
        spans = self.intervals.setdefault(n, [])
        assert not any(s.end is None for s in spans), f"{owner} claimed {n} while owned: {spans}"
        spans.append(Span(owner, time.monotonic()))

    def lost(self, owner: str, n: int) -> None:
        for span in self.intervals.get(n, []):
            if span.owner == owner and span.end is None:
                span.end = time.monotonic()
                return
        raise AssertionError(f"{owner} lost {n} it did not own")

    def killed(self, owner: str) -> None:
        """A killed worker consumes nothing from now on."""
        now = time.monotonic()
        for spans in self.intervals.values():
            for span in spans:
                if span.owner == owner and span.end is None:
                    span.end = now

    def owners(self) -> dict[int, str]:
        return {n: s.owner for n, spans in self.intervals.items() for s in spans if s.end is None}

    def assert_no_overlap(self) -> None:
        for n, spans in self.intervals.items():
            ordered = sorted(spans, key=lambda s: s.start)
            for a, b in itertools.pairwise(ordered):
                assert a.end is not None and a.end <= b.start, (n, a, b)


class Worker:
    def __init__(self, nc: Client, kv: object, owner: str, log: ClaimLog, ttl_s: float) -> None:
        self.nc = nc
        self.owner = owner

        async def acquired(n: int) -> None:
            log.acquired(owner, n)

        async def lost(n: int) -> None:
            log.lost(owner, n)

        self.leases = PartitionLeases(
            kv,  # type: ignore[arg-type]
            owner,
            P,
            ttl_s=ttl_s,
            group=f"g{id(log)}",
            on_acquired=acquired,
            on_lost=lost,
        )
        self.task = asyncio.create_task(self.leases.run())

    async def kill(self) -> None:
        """Cancel without releasing anything: the leases are left to expire, as after kill -9."""
        await _cancel(self.task)

    async def stop(self) -> None:
        await self.kill()
        await self.leases.release_all()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end: within 10 s, or the test fails (a cancellation
    swallowed inside the client would otherwise hang the suite)."""
    for _ in range(10):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if done:
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
            return
    raise AssertionError("the leases task did not stop when cancelled")


async def _until(cond: object, timeout_s: float) -> float:
    start = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_join_split_and_takeover_after_kill(server: NatsServer) -> None:
    log = ClaimLog()
    ncs = [await nats.connect(server.url) for _ in range(2)]
    try:
        kv = await lease_bucket(ncs[0].jetstream(), ttl_s=10.0)
        assert (await kv.status()).ttl == 10.0
        a = Worker(ncs[0], kv, "wa", log, ttl_s=10.0)
        await _until(lambda: len(a.leases.owned) == P, 10)
        b = Worker(ncs[1], await lease_bucket(ncs[1].jetstream()), "wb", log, ttl_s=10.0)
        await _until(lambda: len(a.leases.owned) == len(b.leases.owned) == P // 2, 20)
        assert a.leases.owned | b.leases.owned == set(range(P))
        assert log.owners() == {n: ("wa" if n in a.leases.owned else "wb") for n in range(P)}

        await a.kill()
        log.killed("wa")
        took = await _until(lambda: len(b.leases.owned) == P, 15)
        assert took <= 15
        await b.stop()
        assert b.leases.owned == frozenset()
        log.assert_no_overlap()
    finally:
        for nc in ncs:
            await nc.close()


async def test_cut_off_worker_stops_before_its_leases_expire(server: NatsServer) -> None:
    """A worker that cannot renew (its connection is gone) stops consuming at TTL − margin;
    the other worker's claim succeeds only after the TTL."""
    log = ClaimLog()
    ttl = 4.0
    ncs = [await nats.connect(server.url, allow_reconnect=False) for _ in range(2)]
    try:
        kv_a = await lease_bucket(ncs[0].jetstream(), ttl_s=ttl, name="cw_leases_short")
        assert (await kv_a.status()).ttl == ttl
        a = Worker(ncs[0], kv_a, "wa", log, ttl_s=ttl)
        await _until(lambda: len(a.leases.owned) == P, 10)
        await ncs[0].close()  # a is cut off: every renewal fails from now on
        cut = time.monotonic()
        kv_b = await lease_bucket(ncs[1].jetstream(), name="cw_leases_short")
        b = Worker(ncs[1], kv_b, "wb", log, ttl_s=ttl)
        await _until(lambda: len(a.leases.owned) == 0, ttl)
        stopped = time.monotonic() - cut
        assert stopped < ttl - 0.5, stopped  # before the server can expire the leases
        await _until(lambda: len(b.leases.owned) == P, 15)
        for n in range(P):
            spans = log.intervals[n]
            (a_span,) = [s for s in spans if s.owner == "wa"]
            (b_span,) = [s for s in spans if s.owner == "wb"]
            # b claimed a's partition after a had stopped, with the margin to spare
            assert a_span.end is not None
            gap = b_span.start - a_span.end
            assert gap >= 0.3, (n, gap)
        log.assert_no_overlap()
        await a.kill()
        await b.stop()
    finally:
        for nc in ncs:
            if not nc.is_closed:
                await nc.close()


async def test_a_partition_is_never_left_running_unowned_after_a_slow_start(
    server: NatsServer,
) -> None:
    """``on_acquired`` restores a partition's engine, which can outlast the lease's validity:
    the watchdog then stops the partition while it is still starting (nothing to stop yet).
    What the start then started must be stopped at once, never left consuming a partition
    this worker no longer owns (it ran on, and failed every batch, in the live benchmark)."""
    ttl = 3.0
    nc = await nats.connect(server.url)
    try:
        kv = await lease_bucket(nc.jetstream(), ttl_s=ttl, name="cw_leases_slow")
        running: set[int] = set()

        async def acquired(n: int) -> None:
            await asyncio.sleep(ttl * 1.2)  # longer than the lease stays valid unrenewed
            running.add(n)

        async def lost(n: int) -> None:
            running.discard(n)

        leases = PartitionLeases(
            kv, "slow", 2, ttl_s=ttl, group="gslow", on_acquired=acquired, on_lost=lost
        )
        task = asyncio.create_task(leases.run())
        unowned: list[set[int]] = []
        deadline = time.monotonic() + 3 * ttl
        while time.monotonic() < deadline:
            if running - leases.owned:
                unowned.append(running - leases.owned)
            await asyncio.sleep(0.02)
        await _cancel(task)
        await leases.release_all()
        assert unowned == []
        assert running == set()
    finally:
        await nc.close()
