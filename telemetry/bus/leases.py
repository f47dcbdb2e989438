"""Partition leases in a JetStream key-value bucket: each partition has at most one consumer.

The bucket's TTL (its stream's ``max_age``, e.g. 10 s) is the lease: a key that is not written
again within the TTL disappears. In a group (``dev`` for device partitions, ``trip`` for trip
partitions):

- ``{group}.p.{n}`` — the lease on partition n; value = owner. Claimed with
  ``kv.create`` (succeeds only when the key does not exist: free, released or expired), renewed
  with ``kv.update(last=revision)`` (fails when anyone else wrote it meanwhile), released with
  ``kv.delete(last=revision)``.
- ``{group}.w.{owner}`` — one heartbeat per live worker, written every renewal round.

**Never two consumers at once.** A lease is trusted until ``sent + TTL − margin``, where ``sent``
is when the last successful renewal was *sent* (the server stamps the entry later, so the key
lives at least until ``sent + TTL``). A watchdog stops the partition (``on_lost``) at that
instant if renewals failed meanwhile (server unreachable, slow, or the entry rewritten by
someone else); only after ``sent + TTL`` can another worker's ``create`` succeed. ``on_lost``
must therefore finish within the margin (the consumer stops fetching and abandons what it has
not acknowledged), and the event loop must not be blocked for longer than the margin.

**Sharing.** Every round a worker counts the live workers (heartbeat keys) and takes its share,
``ceil(P / live)``: it claims free partitions up to its share, and releases those above it
(``on_lost`` first, then the key), so a joining worker finds free partitions within a round or
two. A worker that dies simply stops renewing: its partitions are free one TTL later and the
others claim them on their next round (takeover ≤ TTL + renewal interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

LEASE_BUCKET = "cw_leases"
DEFAULT_TTL_S = 10.0

PartitionCallback = Callable[[int], Awaitable[None]]
T = TypeVar("T")


async def lease_bucket(
    js: JetStreamContext,
    ttl_s: float = DEFAULT_TTL_S,
    name: str = LEASE_BUCKET,
    *,
    replicas: int = 1,
) -> KeyValue:
    """The lease bucket, created with TTL ``ttl_s`` if it does not exist yet. An existing bucket
    keeps its TTL: ``PartitionLeases`` reads the TTL from the bucket, never assumes it.
    ``replicas``: as the streams' (on a cluster, a bucket on one node stops every worker's
    renewals while that node is down)."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            bucket=name, ttl=ttl_s, history=1, storage=StorageType.FILE, replicas=replicas
        )
    except nats.js.errors.BadRequestError:
        return await js.key_value(name)  # made meanwhile by another process


def default_owner() -> str:
    """A worker name unique across hosts and restarts, valid as a key token."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return re.sub(r"[^-_=a-zA-Z0-9]", "_", raw)


@dataclass
class _Lease:
    revision: int
    valid_until: float  # monotonic: stop consuming at this instant unless renewed


async def _nothing(_: int) -> None:
    return None


class PartitionLeases:
    """Claims, renews and releases a worker's share of ``partitions`` in ``kv``.

    ``await run()`` until cancelled. Cancelling ``run`` leaves the leases to expire (as a crash
    would); ``await release_all()`` afterwards hands them over at once. ``on_acquired(n)`` is
    awaited after partition n is claimed; ``on_lost(n)`` before it is released, when a renewal
    finds it taken, or when its lease is about to expire unrenewed.
    """

    def __init__(
        self,
        kv: KeyValue,
        owner: str,
        partitions: int,
        *,
        ttl_s: float,
        group: str = "dev",
        on_acquired: PartitionCallback = _nothing,
        on_lost: PartitionCallback = _nothing,
        renew_every_s: float | None = None,
        margin_s: float | None = None,
        op_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not re.fullmatch(r"[-_=a-zA-Z0-9]+", owner):
            raise ValueError(f"owner {owner!r}: use letters, digits, - _ =")
        self.kv = kv
        self.owner = owner
        self.partitions = partitions
        self.ttl_s = ttl_s
        self.group = group
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.renew_every_s = renew_every_s or ttl_s / 3
        self.margin_s = margin_s if margin_s is not None else ttl_s / 5
        self.op_timeout_s = op_timeout_s or min(1.0, self.margin_s / 2)
        if self.renew_every_s + self.op_timeout_s >= ttl_s - self.margin_s:
            raise ValueError("renewal interval too long for the TTL and margin")
        self.clock = clock
        self._owned: dict[int, _Lease] = {}
        self._wake = asyncio.Event()

    @classmethod
    async def from_bucket(
        cls, kv: KeyValue, owner: str, partitions: int, **kwargs: Any
    ) -> PartitionLeases:
        """Leases whose TTL is the bucket's own."""
        status = await kv.status()
        ttl = status.ttl
        if not ttl:
            raise ValueError(f"lease bucket {status.bucket} has no TTL")
        return cls(kv, owner, partitions, ttl_s=ttl, **kwargs)

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    def _key(self, n: int) -> str:
        return f"{self.group}.p.{n}"

    def _heartbeat_key(self) -> str:
        return f"{self.group}.w.{self.owner}"

    async def _op(self, aw: Awaitable[T]) -> T:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
        # that arrives as the operation completes, and then ``run`` never stops
        async with asyncio.timeout(self.op_timeout_s):
            return await aw

    async def run(self) -> None:
        # Renewing has a task of its own: claiming awaits ``on_acquired``, which restores a
        # partition's engine (seconds under load), and renewals waiting behind it let the
        # leases already held expire.
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._every(self.renew, "renewal"))
            tg.create_task(self._every(self.balance, "balancing"))
            tg.create_task(self._watchdog())

    async def _every(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            started = self.clock()
            try:
                await step()
            except (TimeoutError, nats.errors.Error) as exc:
                # The watchdog stops what cannot be renewed in time; keep trying.
                log.warning("lease %s of %s failed: %r", what, self.owner, exc)
            await asyncio.sleep(max(0.0, self.renew_every_s - (self.clock() - started)))

    async def _watchdog(self) -> None:
        while True:
            now = self.clock()
            for n, lease in list(self._owned.items()):
                if lease.valid_until <= now and self._owned.get(n) is lease:
                    del self._owned[n]
                    log.warning("lease on %s.%d not renewed in time: stopping", self.group, n)
                    await self.on_lost(n)
            deadline = min((lease.valid_until for lease in self._owned.values()), default=None)
            wait = self.renew_every_s if deadline is None else max(0.0, deadline - self.clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, self.renew_every_s)):
                    await self._wake.wait()

    async def round(self) -> None:
        """One round: heartbeat, renew, then claim or release towards the share."""
        await self.renew()
        await self.balance()

    async def renew(self) -> None:
        """Heartbeat, and renew every lease held."""
        await self._op(self.kv.put(self._heartbeat_key(), self.owner.encode()))
        await asyncio.gather(*(self._renew(n) for n in list(self._owned)))

    async def balance(self) -> None:
        """Claim free partitions or release owned ones towards this worker's share."""
        held, live = await self._snapshot()
        share = math.ceil(self.partitions / max(1, live))
        excess = len(self._owned) - share
        if excess > 0:
            for n in sorted(self._owned, reverse=True)[:excess]:
                await self._release(n)
            return
        free = [n for n in range(self.partitions) if n not in held and n not in self._owned]
        random.shuffle(free)
        for n in free:
            if len(self._owned) >= share:
                break
            await self._claim(n)

    async def _renew(self, n: int) -> None:
        lease = self._owned.get(n)
        if lease is None:
            return
        sent = self.clock()
        try:
            revision = await self._op(
                self.kv.update(self._key(n), self.owner.encode(), last=lease.revision)
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            if self._owned.get(n) is lease:
                del self._owned[n]
                log.warning("lease on %s.%d taken by another worker", self.group, n)
                await self.on_lost(n)
            return
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("renewing %s.%d failed: %r", self.group, n, exc)
            return
        if self._owned.get(n) is lease:
            lease.revision = revision
            lease.valid_until = sent + self.ttl_s - self.margin_s
        else:  # stopped meanwhile (watchdog): give the renewed key back
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await self._op(self.kv.delete(self._key(n), last=revision))

    async def _claim(self, n: int) -> None:
        sent = self.clock()
        try:
            revision = await self._op(self.kv.create(self._key(n), self.owner.encode()))
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # claimed by another worker since the snapshot
        lease = self._owned[n] = _Lease(revision, sent + self.ttl_s - self.margin_s)
        self._wake.set()
        log.info("%s claimed %s.%d", self.owner, self.group, n)
        try:
            await self.on_acquired(n)
            if self._owned.get(n) is not lease:
                # Lost while starting (the watchdog's ``on_lost`` came before the start
                # finished, so it stopped nothing): stop what was just started.
                log.warning("lease on %s.%d lost while starting: stopping", self.group, n)
                await self.on_lost(n)
        except Exception:
            # Not consumable here (e.g. the consumer could not be made): let another try.
            log.exception("%s could not start %s.%d: releasing it", self.owner, self.group, n)
            if self._owned.pop(n, None) is not None:
                with contextlib.suppress(TimeoutError, nats.errors.Error):
                    await self._op(self.kv.delete(self._key(n), last=revision))

    async def _release(self, n: int) -> None:
        lease = self._owned.pop(n, None)
        if lease is None:
            return
        await self.on_lost(n)  # stop consuming first, then let others claim it
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await self._op(self.kv.delete(self._key(n), last=lease.revision))
        log.info("%s released %s.%d", self.owner, self.group, n)

    async def release_all(self) -> None:
        """Stop every owned partition and free its lease (a clean shutdown, after ``run``)."""
        for n in sorted(self._owned):
            await self._release(n)
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await self._op(self.kv.delete(self._heartbeat_key()))

    async def _snapshot(self) -> tuple[set[int], int]:
        """Partitions held by anyone, and the number of live workers (heartbeats)."""
        prefix = f"{self.group}."
        watcher = await self._op(self.kv.watch(f"{prefix}>", ignore_deletes=True, meta_only=True))
        held: set[int] = set()
        live = 0
        try:
            while True:
                entry = await watcher.updates(timeout=self.op_timeout_s)
                if entry is None:
                    break
                kind, _, rest = entry.key[len(prefix) :].partition(".")
                if kind == "p" and rest.isdigit():
                    held.add(int(rest))
                elif kind == "w":
                    live += 1
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()
        return held, live
