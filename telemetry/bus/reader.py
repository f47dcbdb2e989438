"""A worker's reading side: partition leases plus one consumer per owned partition.

``PartitionedReader`` claims its share of a stream's partitions (``leases``) and runs a
``PartitionConsumer`` on each partition it holds: started when the lease is acquired, stopped
(and its unhandled messages given back) before the lease is released or can expire. The
handler is made per partition by an async factory, so a worker can restore the partition's
checkpointed engine state before its first batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from telemetry.bus.consumer import BatchHandler, PartitionConsumer
from telemetry.bus.leases import PartitionLeases

log = logging.getLogger(__name__)

HandlerFactory = Callable[[int], Awaitable[BatchHandler]]


class PartitionedReader:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        owner: str,
        *,
        stream: str,
        prefix: str,
        partitions: int,
        handler_for: HandlerFactory,
        ttl_s: float,
        group: str | None = None,
        consumer_options: dict[str, Any] | None = None,
        lease_options: dict[str, Any] | None = None,
    ) -> None:
        self.js = js
        self.stream = stream
        self.prefix = prefix
        self.handler_for = handler_for
        self.consumer_options = consumer_options or {}
        self.consumers: dict[int, PartitionConsumer] = {}
        self.leases = PartitionLeases(
            kv,
            owner,
            partitions,
            ttl_s=ttl_s,
            group=group or prefix,
            on_acquired=self._acquired,
            on_lost=self._lost,
            **(lease_options or {}),
        )
        self._task: asyncio.Task[None] | None = None

    async def _acquired(self, n: int) -> None:
        handler = await self.handler_for(n)
        consumer = PartitionConsumer(
            self.js, self.stream, self.prefix, n, handler, **self.consumer_options
        )
        await consumer.start()
        self.consumers[n] = consumer

    async def _lost(self, n: int) -> None:
        consumer = self.consumers.pop(n, None)
        if consumer is not None:
            await consumer.stop()

    def start(self) -> None:
        self._task = asyncio.create_task(self.leases.run(), name=f"leases.{self.prefix}")

    async def close(self) -> None:
        """Stop every consumer and release every lease (a clean shutdown)."""
        if self._task is not None:
            task, self._task = self._task, None
            # Cancelled again until it ends: a cancellation that arrives as one of the
            # client's own timed waits completes can be swallowed (Python 3.11 wait_for).
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
        await self.leases.release_all()
        for n in list(self.consumers):
            await self._lost(n)

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self.consumers)
