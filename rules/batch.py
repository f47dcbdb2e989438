"""Columnar views of an ingest batch and its split into per-trip rounds.

Fixes become parallel numpy arrays once per batch (``FixCols``); lock events, which are few,
keep their objects next to a few arrays (``LockCols``). ``rounds`` orders every message of a
batch by (trip, event time) and deals them into rounds: round k holds the k-th message of
each trip, so within a round every trip appears at most once and its state can be updated
with plain array scatters, while messages of one trip are still applied in event-time order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.state import DeviceTable
from telemetry.models import Fix, LockEvent

__all__ = ["FixCols", "LockCols", "Round", "duplicate_mask", "rounds"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_DEVICE = attrgetter("device_id")


def _column(
    items: Sequence[object], name: str, n: int, dtype: type = np.float64
) -> npt.NDArray[Any]:
    """One attribute of every item as an array (absent numbers -> NaN for floats)."""
    values = map(attrgetter(name), items)
    try:
        return np.fromiter(values, dtype, n)  # C-speed path when no value is None
    except TypeError:
        return np.array([getattr(i, name) for i in items], dtype=np.float64)


_LOCK_FIELDS = attrgetter("device_id", "ts", "seq", "received_at", "battery_pct")


@dataclass(slots=True)
class FixCols:
    """Fixes as parallel arrays. ``seq`` and the optional numbers are NaN when absent."""

    dev: I64
    ts: I64
    lon: F64
    lat: F64
    speed: F64
    battery: F64
    seq: F64
    recv: I64

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls) -> FixCols:
        i, f = np.zeros(0, np.int64), np.zeros(0)
        return cls(i, i, f, f, f, f, f, i)

    @classmethod
    def from_fixes(cls, fixes: Sequence[Fix], devices: DeviceTable) -> FixCols:
        """Arrays of ``fixes`` (device ids resolved to slots, allocating unknown ones)."""
        if not fixes:
            return cls.empty()
        n = len(fixes)
        return cls(
            dev=devices.slots(list(map(_DEVICE, fixes))),
            ts=_column(fixes, "ts", n, np.int64),
            lon=_column(fixes, "lon", n),
            lat=_column(fixes, "lat", n),
            speed=_column(fixes, "speed_kmh", n),
            battery=_column(fixes, "battery_pct", n),
            seq=_column(fixes, "seq", n),
            recv=_column(fixes, "received_at", n, np.int64),
        )

    def take(self, idx: I64 | npt.NDArray[np.bool_]) -> FixCols:
        """The rows ``idx`` (indices or mask)."""
        return FixCols(
            self.dev[idx],
            self.ts[idx],
            self.lon[idx],
            self.lat[idx],
            self.speed[idx],
            self.battery[idx],
            self.seq[idx],
            self.recv[idx],
        )

    @staticmethod
    def concat(parts: Sequence[FixCols]) -> FixCols:
        parts = [p for p in parts if len(p)]
        if not parts:
            return FixCols.empty()
        if len(parts) == 1:
            return parts[0]
        return FixCols(*(np.concatenate([getattr(p, f) for p in parts]) for f in FixCols.__slots__))


@dataclass(slots=True)
class LockCols:
    """Lock events: the objects plus arrays of what sorting and state need."""

    events: list[LockEvent]
    dev: I64
    ts: I64
    seq: F64
    recv: I64
    battery: F64

    def __len__(self) -> int:
        return len(self.events)

    @classmethod
    def empty(cls) -> LockCols:
        i, f = np.zeros(0, np.int64), np.zeros(0)
        return cls([], i, i, f, i, f)

    @classmethod
    def from_events(cls, events: Sequence[LockEvent], devices: DeviceTable) -> LockCols:
        if not events:
            return cls.empty()
        cols = list(zip(*map(_LOCK_FIELDS, events), strict=True))
        return cls(
            events=list(events),
            dev=devices.slots(list(cols[0])),
            ts=np.array(cols[1], dtype=np.int64),
            seq=np.array(cols[2], dtype=np.float64),
            recv=np.array(cols[3], dtype=np.int64),
            battery=np.array(cols[4], dtype=np.float64),
        )

    def take(self, idx: I64 | npt.NDArray[np.bool_]) -> LockCols:
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        ev = self.events
        return LockCols(
            [ev[i] for i in idx.tolist()],
            self.dev[idx],
            self.ts[idx],
            self.seq[idx],
            self.recv[idx],
            self.battery[idx],
        )

    @staticmethod
    def concat(parts: Sequence[LockCols]) -> LockCols:
        parts = [p for p in parts if len(p)]
        if not parts:
            return LockCols.empty()
        if len(parts) == 1:
            return parts[0]
        return LockCols(
            [e for p in parts for e in p.events],
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("dev", "ts", "seq", "recv", "battery")
            ),
        )


def duplicate_mask(dev: I64, ts: I64, seq: F64) -> npt.NDArray[np.bool_]:
    """True for every message that repeats an earlier one of the same (device, ts, seq)
    (an absent seq equals an absent seq); the first occurrence is kept."""
    n = ts.shape[0]
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    seq_key = np.where(np.isnan(seq), -np.inf, seq)
    order = np.lexsort((np.arange(n), seq_key, ts, dev))
    same = (
        (dev[order][1:] == dev[order][:-1])
        & (ts[order][1:] == ts[order][:-1])
        & (seq_key[order][1:] == seq_key[order][:-1])
    )
    dup[order[1:][same]] = True
    return dup


@dataclass(slots=True)
class Round:
    """Row indices of one round: fixes and lock events (never two of one trip)."""

    fixes: I64
    locks: I64


def rounds(
    fix_group: I64,
    fix_ts: I64,
    fix_dev: I64,
    fix_seq: F64,
    lock_group: I64,
    lock_ts: I64,
    lock_dev: I64,
    lock_seq: F64,
) -> Iterator[Round]:
    """Deal the messages into rounds by their rank in (group, ts) order.

    ``group`` is the trip slot, or a per-device value for devices on no trip. Ties in ts put
    fixes before lock events (an unlock at the same instant sees the fix), then order by
    device and seq, so the result does not depend on the arrival order.
    """
    nf, nl = fix_ts.shape[0], lock_ts.shape[0]
    if nf + nl == 0:
        return
    group = np.concatenate([fix_group, lock_group])
    if np.bincount(group - group.min()).max() == 1:  # one message per trip: one round
        yield Round(np.arange(nf), np.arange(nl))
        return
    ts = np.concatenate([fix_ts, lock_ts])
    kind = np.concatenate([np.zeros(nf, np.int8), np.ones(nl, np.int8)])
    dev = np.concatenate([fix_dev, lock_dev])
    seq = np.nan_to_num(np.concatenate([fix_seq, lock_seq]), nan=-1.0)
    row = np.concatenate([np.arange(nf), np.arange(nl)])
    order = np.lexsort((seq, dev, kind, ts, group))
    g = group[order]
    first = np.ones(g.shape[0], dtype=bool)
    first[1:] = g[1:] != g[:-1]
    if first.all():  # one message per trip: a single round (the common live case)
        k = kind[order]
        yield Round(row[order][k == 0], row[order][k == 1])
        return
    starts = np.flatnonzero(first)
    start_of = np.repeat(starts, np.diff(np.append(starts, g.shape[0])))
    rank = np.arange(g.shape[0]) - start_of
    by_rank = np.argsort(rank, kind="stable")
    counts = np.bincount(rank)
    pos = 0
    for c in counts.tolist():
        sel = order[by_rank[pos : pos + c]]
        pos += c
        k = kind[sel]
        yield Round(row[sel][k == 0], row[sel][k == 1])
