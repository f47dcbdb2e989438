"""Columnar batches, duplicate detection and the per-trip rounds."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rules.batch import FixCols, LockCols, duplicate_mask, rounds
from rules.state import DeviceTable
from telemetry.models import Fix
from tests.tracks import T0, lock_event


def test_fix_columns_with_absent_fields() -> None:
    devices = DeviceTable(capacity=1)
    fixes = [
        Fix("a", T0, 31.0, 121.0, speed_kmh=None, battery_pct=50, seq=3, received_at=T0 + 1),
        Fix("b", T0 + 1, 31.1, 121.1, speed_kmh=12.5),
    ]
    cols = FixCols.from_fixes(fixes, devices)
    assert cols.dev.tolist() == [0, 1] and devices.ids == ["a", "b"]
    assert np.isnan(cols.speed[0]) and cols.speed[1] == 12.5
    assert cols.battery[0] == 50 and np.isnan(cols.battery[1])
    assert cols.seq[0] == 3 and np.isnan(cols.seq[1])
    assert cols.recv.tolist() == [T0 + 1, 0]
    assert len(cols.take(np.array([1]))) == 1
    assert len(FixCols.concat([cols, FixCols.empty(), cols])) == 4
    assert len(FixCols.from_fixes([], devices)) == 0


def test_lock_columns() -> None:
    devices = DeviceTable()
    locks = LockCols.from_events(
        [lock_event("locked", T0), lock_event("tamper", T0 + 5, seq=2)], devices
    )
    assert locks.ts.tolist() == [T0, T0 + 5] and np.isnan(locks.seq[0]) and locks.seq[1] == 2
    sub = locks.take(np.array([False, True]))
    assert [e.event for e in sub.events] == ["tamper"]
    assert len(LockCols.concat([locks, sub])) == 3


def test_duplicates() -> None:
    dev = np.array([0, 0, 1, 0, 0])
    ts = np.array([5, 5, 5, 5, 6])
    seq = np.array([np.nan, np.nan, np.nan, 1.0, 1.0])
    assert duplicate_mask(dev, ts, seq).tolist() == [False, True, False, False, False]


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(-1, 2), st.integers(0, 20), st.booleans()),
        max_size=40,
    )
)
def test_rounds_hold_each_group_once_in_time_order(msgs: list) -> None:
    groups = np.array([g if g >= 0 else 100 + d for d, g, _, _ in msgs], dtype=np.int64)
    ts = np.array([t for _, _, t, _ in msgs], dtype=np.int64)
    dev = np.array([d for d, _, _, _ in msgs], dtype=np.int64)
    is_lock = np.array([k for *_, k in msgs], dtype=bool)
    fi, li = np.flatnonzero(~is_lock), np.flatnonzero(is_lock)
    nan = np.full(len(msgs), np.nan)
    seen: dict[int, tuple[int, int]] = {}
    count = 0
    for rnd in rounds(groups[fi], ts[fi], dev[fi], nan[fi], groups[li], ts[li], dev[li], nan[li]):
        rows = [(int(groups[fi[r]]), int(ts[fi[r]]), 0) for r in rnd.fixes]
        rows += [(int(groups[li[r]]), int(ts[li[r]]), 1) for r in rnd.locks]
        assert len({g for g, _, _ in rows}) == len(rows)  # a group at most once per round
        for g, t, k in rows:
            assert seen.get(g, (-1, -1)) <= (t, k)  # per group: time order, fixes first on ties
            seen[g] = (t, k)
        count += len(rows)
    assert count == len(msgs)
