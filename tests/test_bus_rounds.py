"""Rounds (``busmode.rounds``): the batches of several partitions handed over on one beat
are handled in one call; each submitter gets its own batch's outcome; a batch whose
submitter stopped waiting before its round is left out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cargowatch.busmode.rounds import Item, Rounds
from telemetry.bus.consumer import BusMessage


def _batch(n: int, size: int = 2) -> list[BusMessage]:
    return [
        BusMessage(f"part.{n}.devices.d{n}.position", f"d{n}", "position", b"{}", i, 0, 1)
        for i in range(1, size + 1)
    ]


class Recorder:
    def __init__(self, fail: dict[int, BaseException] | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail or {}
        self.raise_all: Exception | None = None

    async def run(self, items: list[Item]) -> Sequence[BaseException | None]:
        self.calls.append([n for n, _ in items])
        await asyncio.sleep(0.01)
        if self.raise_all is not None:
            raise self.raise_all
        return [self.fail.get(n) for n, _ in items]


async def test_one_beat_is_one_round() -> None:
    rec = Recorder()
    rounds = Rounds(rec.run, name="t")
    await asyncio.gather(*(rounds.submit(n, _batch(n)) for n in range(4)))
    assert rec.calls == [[0, 1, 2, 3]]
    # handed over while that round ran: the next round, together
    first = asyncio.gather(rounds.submit(0, _batch(0)))
    await asyncio.sleep(0.007)  # the round has begun
    await asyncio.gather(first, rounds.submit(1, _batch(1)), rounds.submit(2, _batch(2)))
    assert rec.calls[1:] == [[0], [1, 2]]
    assert (rounds.rounds, rounds.batches) == (3, 7)
    await rounds.close()


async def test_each_batch_gets_its_own_outcome() -> None:
    rec = Recorder(fail={1: ValueError("partition 1 lost")})
    rounds = Rounds(rec.run, name="t")
    results = await asyncio.gather(
        *(rounds.submit(n, _batch(n)) for n in range(3)), return_exceptions=True
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ValueError)
    rec.raise_all = RuntimeError("store down")
    results = await asyncio.gather(
        *(rounds.submit(n, _batch(n)) for n in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    # the rounds go on after a failed one
    rec.raise_all = None
    await rounds.submit(0, _batch(0))
    await rounds.close()


async def test_a_batch_no_longer_waited_for_is_left_out() -> None:
    rec = Recorder()
    rounds = Rounds(rec.run, name="t", gather_s=0.05)
    gone = asyncio.create_task(rounds.submit(7, _batch(7)))
    await asyncio.sleep(0.01)
    gone.cancel()  # its partition was lost before the round began
    await rounds.submit(3, _batch(3))
    assert rec.calls == [[3]]
    with pytest.raises(asyncio.CancelledError):
        await gone
    await rounds.close()


async def test_close_fails_what_waits() -> None:
    rec = Recorder()
    rounds = Rounds(rec.run, name="t", gather_s=10.0)
    waiting = asyncio.create_task(rounds.submit(0, _batch(0)))
    await asyncio.sleep(0.01)
    await rounds.close()
    with pytest.raises(RuntimeError, match="stopped"):
        await waiting
    assert rec.calls == []
