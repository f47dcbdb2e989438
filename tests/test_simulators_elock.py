"""E-lock custody sequence, heartbeats and battery."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from simulators.elock import (
    LOW_BATTERY_PCT,
    StopVisit,
    battery_crossing_ms,
    custody,
    heartbeat_times,
    unseal_ms,
)
from simulators.payloads import DeviceSpec

T0 = 1_795_334_400_000
MIN = 60_000


def test_custody_seals_unseals_and_reseals_in_order() -> None:
    visits = [
        StopVisit("S1", T0 + 60 * MIN, T0 + 90 * MIN, last=False),
        StopVisit("S2", T0 + 120 * MIN, T0 + 120 * MIN, last=True),
    ]
    acts = custody(T0 + 3 * MIN, visits, np.random.default_rng(1))
    assert [(a.event, a.method) for a in acts] == [
        ("locked", None),
        ("unlocked", "rfid"),
        ("locked", None),
        ("unlocked", "rfid"),
    ]
    ts = [a.ts_ms for a in acts]
    assert ts == sorted(ts)
    assert visits[0].arrive_ms < ts[1] < ts[2] < visits[0].leave_ms
    assert ts[3] > visits[1].arrive_ms
    assert unseal_ms(acts) == ts[3]
    # lock events are never on a whole second (a combined unit's fixes are)
    assert all(t % 1000 for t in ts[1:])


def test_heartbeats_are_periodic() -> None:
    hb = heartbeat_times(T0, T0 + 60 * MIN, 300, np.random.default_rng(2))
    assert len(hb) == 12 and (np.diff(hb) == 300_000).all()
    assert T0 < hb[0] < T0 + 60_000


@given(b0=st.floats(16, 100), drain=st.floats(0.1, 20))
def test_battery_crossing_is_the_first_low_reading(b0: float, drain: float) -> None:
    dev = DeviceSpec("lock-1", "lock", battery0=b0, drain_per_h=drain)
    t = battery_crossing_ms(T0, b0, drain)
    assert t is not None
    before, after = dev.battery_at(T0, np.array([t - 2, t + 1]))
    assert before > LOW_BATTERY_PCT >= after


def test_no_crossing_without_drain() -> None:
    assert battery_crossing_ms(T0, 50, 0.0) is None
    dev = DeviceSpec("gps-1", "gps", battery0=97.4)
    assert dev.battery_at(T0, np.array([T0, T0 + 10 * 3_600_000])).tolist() == [97, 97]
    assert DeviceSpec("x", "lock", battery0=3, drain_per_h=5).battery_at(
        T0, np.array([T0 + 3_600_000])
    ).tolist() == [0]
