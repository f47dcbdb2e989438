"""Live position events from the engine's columns (``alerts.positions``): the same events as
rendering each ``PositionUpdate`` of the batch, for any values."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from alerts.positions import position_events
from alerts.service import _position_event
from rules import PositionBatch

MS_2100 = 4_102_444_800_000  # 2100-01-01

row = st.tuples(
    st.text(min_size=1, max_size=8),
    st.one_of(st.none(), st.text(max_size=8)),
    st.one_of(st.none(), st.text(max_size=8)),
    st.integers(0, MS_2100),
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.one_of(st.just(math.nan), st.floats(0, 300)),
    st.integers(0, 3),
    st.one_of(st.just(math.nan), st.floats(0, 1e6)),
)


def _batch(rows: list[tuple]) -> PositionBatch:
    cols = list(zip(*rows, strict=True)) if rows else [()] * 9
    obj = [np.array(c, dtype=object) for c in cols[:3]]
    return PositionBatch(
        *obj,
        np.array(cols[3], dtype=np.int64),
        np.array(cols[4], dtype=np.float64),
        np.array(cols[5], dtype=np.float64),
        np.array(cols[6], dtype=np.float64),
        np.array(cols[7], dtype=np.int8),
        np.array(cols[8], dtype=np.float64),
    )


@given(st.lists(row, max_size=20))
def test_the_same_events_as_each_update_rendered(rows: list[tuple]) -> None:
    batch = _batch(rows)
    assert position_events(batch) == [_position_event(u) for u in batch.updates()]


def test_a_known_event() -> None:
    batch = _batch([("gps-1", "T1", "pg", 1_795_334_405_123, 31.2, 121.4, math.nan, 2, 12.34)])
    assert position_events(batch) == [
        {
            "type": "position",
            "shipper": "pg",
            "data": {
                "device_id": "gps-1",
                "trip_id": "T1",
                "ts": "2026-11-22T08:00:05.123Z",
                "lat": 31.2,
                "lon": 121.4,
                "speed_kmh": None,
                "state": "stopped",
                "distance_to_route_m": 12.3,
            },
        }
    ]
    assert position_events(PositionBatch.empty()) == []
