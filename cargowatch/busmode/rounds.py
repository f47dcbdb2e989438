"""A worker's partitions handled together: one round for the batches of every partition.

A batch costs a stage mostly the same whatever its size (a thread hand-off, a validation
pass and a re-key publish per trip partition in stage 1; a store transaction, a COPY and the
rules' array set-up in stage 2). Per partition, a worker holding P partitions of a stage paid
that P times a beat: with 16 partitions over 2 workers, 8 batches a beat where one would do
(``bench.live --partitions 16`` spent 18 % more CPU a message than with 4).

So the consumers of one stage hand their batches over on a shared beat (``PartitionConsumer``
with ``linger_grid``), and ``Rounds`` takes every batch handed over by then and passes them
to ``run`` in ONE call: a round. Each consumer waits for the round that took its batch and
acknowledges its batch after it (or gives it back when its part of the round failed), so
per partition nothing changes: batches in order, one in hand at a time, acknowledged after
the round committed. A batch whose consumer stopped waiting (its partition was lost) before
its round began is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from telemetry.bus.consumer import BusMessage

log = logging.getLogger(__name__)

Item = tuple[int, Sequence[BusMessage]]
"""A partition's number and its batch."""
RoundRunner = Callable[[list[Item]], Awaitable[Sequence[BaseException | None]]]
"""Handles one round's items; returns, per item, None or the error its batch failed with
(an exception raised fails every item of the round)."""

GATHER_S = 0.005
"""A round begins this long after the first hand-over of a beat: the other consumers of the
beat (their timers fire together, their acknowledgements of the last round return within a
round trip of each other) hand theirs over meanwhile."""


class Rounds:
    """Batches of one stage's partitions, handled a round at a time by ``run``."""

    def __init__(self, run: RoundRunner, *, name: str, gather_s: float = GATHER_S) -> None:
        self._run = run
        self.name = name
        self.gather_s = gather_s
        self._pending: list[tuple[int, Sequence[BusMessage], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.batches = 0

    async def submit(self, n: int, batch: Sequence[BusMessage]) -> None:
        """Hand partition ``n``'s batch over and wait for its round; raises what its batch
        failed with (the consumer then gives the batch back)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((n, batch, future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"rounds.{self.name}")
        await future

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.gather_s)
            # a consumer that stopped waiting (cancelled: its partition was lost) is left out
            items = [p for p in self._pending if not p[2].done()]
            self._pending = []
            if not items:
                continue
            self.rounds += 1
            self.batches += len(items)
            try:
                errors = await self._run([(n, batch) for n, batch, _ in items])
            except asyncio.CancelledError:
                _settle(items, [RuntimeError(f"{self.name} rounds stopped")] * len(items))
                raise
            except Exception as exc:
                _settle(items, [exc] * len(items))
                continue
            _settle(items, errors)

    async def close(self) -> None:
        """Stop: batches still waiting fail (their consumers give them back)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending, self._pending = self._pending, []
        _settle(pending, [RuntimeError(f"{self.name} rounds stopped")] * len(pending))


def _settle(
    items: Sequence[tuple[int, Sequence[BusMessage], asyncio.Future[None]]],
    errors: Sequence[BaseException | None],
) -> None:
    if len(errors) != len(items):
        log.error("a round returned %d outcomes for %d batches", len(errors), len(items))
        errors = [RuntimeError("round outcome missing")] * len(items)
    for (_, _, future), error in zip(items, errors, strict=True):
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
