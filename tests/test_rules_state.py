"""State tables: slots, growth, release, flattened stop arrays, stop progress."""

from __future__ import annotations

import numpy as np

from rules.state import DEVICE_ROW, TC, TRIP_ROW, DeviceTable, StopProgress, TripTable


def _stops(table: TripTable, slot: int, n: int) -> None:
    table.set_stops(
        slot,
        np.arange(n + 1, dtype=np.int64),
        np.arange(-1, n, dtype=np.int64),
        np.zeros((n + 1, 4)),
        np.ones(n, bool),
        np.full(n, 60_000.0),
        np.full(n, np.inf),
    )


def test_trip_table_grows_and_reuses_slots() -> None:
    table = TripTable(capacity=2)
    slots = [table.allocate() for _ in range(5)]
    assert sorted(slots) == list(range(5)) and table.capacity == 8
    assert np.isnan(table.heard).all() and (table.gen == -1).all()
    table.m[slots[0], TC.OFF_COUNT] = 3
    table.release(slots[0])
    assert np.array_equal(table.m[slots[0]], TRIP_ROW, equal_nan=True)
    assert table.allocate() == slots[0]


def test_stop_arrays_are_compacted() -> None:
    table = TripTable(capacity=4)
    keep = table.allocate()
    table.gen[keep] = 1
    table.info[keep] = object()  # type: ignore[assignment]
    _stops(table, keep, 2)
    other = table.allocate()
    for _ in range(700):  # re-planning leaves garbage behind
        _stops(table, other, 1)
    assert table.tf_slot.size < 1500
    base = int(table.fence_base[keep])
    assert table.tf_stop[base : base + 3].tolist() == [-1, 0, 1]
    assert (
        table.st_dwell_ms[table.stop_base[keep] : table.stop_base[keep] + 2].tolist()
        == [60_000.0] * 2
    )


def test_device_table() -> None:
    devices = DeviceTable(capacity=1)
    assert devices.slots(["a", "b", "a", "c"]).tolist() == [0, 1, 0, 2]
    assert devices.m.shape[0] >= 3 and (devices.trip == -1).all()
    assert np.array_equal(devices.m[2], DEVICE_ROW, equal_nan=True)


def test_stop_progress() -> None:
    p = StopProgress.empty(3)
    assert p.next_arrival() == 0 and not p.visited(0)
    p = p.with_("arrived", 0, 10)
    assert p.next_arrival() == 1 and not p.visited(0)
    assert p.with_("left", 0, 20).visited(0)
    assert p.with_("unsealed", 1, 30).visited(1)
    assert StopProgress.empty(3).arrived == (-1, -1, -1)


def test_dirty_flags_survive_growth_and_clear_on_release() -> None:
    table = TripTable(capacity=1)
    a = table.allocate()
    table.dirty[a] = True
    b = table.allocate()  # grows
    assert table.dirty.shape[0] == table.capacity and table.dirty[a] and not table.dirty[b]
    table.release(a)
    assert not table.dirty[a]
