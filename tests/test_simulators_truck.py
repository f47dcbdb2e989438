"""Truck kinematics: the speed profile respects limits and acceleration, motion and reported
speed agree, halts stand still for their dwell, fixes come often enough."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.roads import LocalFrame, default_atlas, make_path
from simulators.truck import (
    DrivePlan,
    Halt,
    Reporting,
    SpeedZone,
    drive,
    fix_columns,
    fix_times,
    target_speeds,
)

T0 = 1_795_334_400_000


def straight(length_m: float = 5_000.0, kmh: float = 70.0):
    fr = LocalFrame.around(-16.9, 145.7)
    lon, lat = fr.to_lonlat(np.array([0.0, length_m]), np.array([0.0, 0.0]))
    return make_path(lon, lat, np.full(2, kmh), fr)


def accelerations(plan: DrivePlan, drv) -> np.ndarray:
    w = drv.v**2
    ds = np.diff(drv.s)
    moving = ds > 0
    return (np.diff(w)[moving]) / (2 * ds[moving])


def test_straight_road_accelerates_cruises_and_brakes() -> None:
    plan = DrivePlan(straight(), T0)
    drv = drive(plan)
    assert drv.v[0] == 0 and drv.v[-1] == 0
    assert drv.v.max() * 3.6 == pytest.approx(70.0)
    a = accelerations(plan, drv)
    assert a.max() <= plan.accel + 1e-9 and a.min() >= -plan.decel - 1e-9
    # 5 km at 70 km/h plus the time lost accelerating and braking
    assert 5_000 / (70 / 3.6) < (drv.end_ms - drv.depart_ms) / 1000 < 5_000 / (70 / 3.6) + 30


@settings(max_examples=40, deadline=None)
@given(
    pace=st.floats(0.8, 1.1),
    halts=st.lists(st.tuples(st.integers(5, 300), st.floats(5, 3_000)), max_size=4),
    zone=st.one_of(
        st.none(), st.tuples(st.floats(0, 20_000), st.floats(100, 3_000), st.floats(5, 110))
    ),
)
def test_profile_invariants_on_a_real_road(pace, halts, zone) -> None:
    path = default_atlas().roads[2].path
    verts: list[int] = []
    for v in sorted({v for v, _ in halts}):
        if not verts or v - verts[-1] > 1:  # plans keep halts apart (drive() refuses)
            verts.append(v)
    hs = tuple(Halt(v, dict(halts)[v], "traffic") for v in verts)
    zones = (
        ()
        if zone is None
        else (SpeedZone(zone[0], zone[0] + zone[1], zone[2], force=zone[2] > 90),)
    )
    plan = DrivePlan(path, T0, hs, zones, pace=pace)
    drv = drive(plan)
    target = target_speeds(plan)
    # never faster than the target (speeds at knots are the path's vertices, halts doubled)
    v_at_vertex = np.interp(path.s, drv.s, drv.v)
    assert (v_at_vertex <= target / 3.6 + 1e-6).all()
    a = accelerations(plan, drv)
    assert a.max() <= plan.accel + 1e-6 and a.min() >= -plan.decel - 1e-6
    # each halt stands still for its dwell at its vertex
    for h, (arrive, leave) in zip(hs, drv.halt_windows, strict=True):
        assert leave - arrive == pytest.approx(h.dwell_s * 1000, abs=1)
        s, v = drv.at(np.linspace(arrive + 1, leave - 1, 7))
        assert np.allclose(s, path.s[h.vertex]) and np.allclose(v, 0)
    # position is the integral of speed: finite differences agree
    # (exact within a segment; across a knot the acceleration changes, hence the short step)
    t = np.arange(drv.depart_ms, drv.end_ms, 97.0)
    s, v = drv.at(t)
    assert (np.diff(s) >= -1e-9).all()
    mid = (v[:-1] + v[1:]) / 2
    np.testing.assert_allclose(np.diff(s), mid * 0.097, atol=0.005)
    np.testing.assert_allclose(drv.at(drv.t_ms)[0], drv.s, atol=1e-6)
    assert drv.at(np.array([drv.end_ms + 1e6]))[0][0] == pytest.approx(path.length_m)
    assert drv.at(np.array([T0 - 1e6]))[0][0] == 0.0


def test_adjacent_halts_are_refused() -> None:
    path = straight(5_000, 70)
    with pytest.raises(ValueError, match="adjacent"):
        drive(DrivePlan(path, T0, (Halt(10, 60.0, "traffic"), Halt(11, 60.0, "traffic"))))


def test_forced_zone_overrides_the_cap_and_time_at_inverts_position() -> None:
    path = straight(10_000, 70)
    plan = DrivePlan(path, T0, zones=(SpeedZone(2_000, 8_000, 100, force=True),))
    drv = drive(plan)
    assert drv.v.max() * 3.6 == pytest.approx(100)
    for s in (500.0, 3_000.0, 9_000.0):
        t = float(drv.time_at(s))
        assert drv.at(np.array([t]))[0][0] == pytest.approx(s, abs=3.0)


@settings(max_examples=25, deadline=None)
@given(interval=st.sampled_from([10, 12, 15]), seed=st.integers(0, 10_000))
def test_fixes_are_frequent_and_thinned_while_standing(interval: int, seed: int) -> None:
    path = default_atlas().roads[0].path
    plan = DrivePlan(path, T0 + 600_000, (Halt(200, 1_800, "stop"),))
    drv = drive(plan)
    rep = Reporting(interval_s=interval, idle_every=3, noise_m=3.0)
    rng = np.random.default_rng(seed)
    on, off = T0, drv.end_ms + 300_000
    t = fix_times(drv, on, off, rep, rng, outages=[(T0 + 100_000, T0 + 400_000)])
    gaps = np.diff(t)
    assert (t % 1000 == 0).all() and (gaps > 0).all()
    outage = (t >= T0 + 100_000) & (t < T0 + 400_000)
    assert not outage.any()
    across = (t[:-1] < T0 + 100_000) & (t[1:] >= T0 + 400_000)
    assert across.sum() == 1 and gaps[~across].max() < 60_000
    _, v = drv.at(t)
    moving = v[1:] > 0.3
    assert np.median(gaps[moving]) == pytest.approx(interval * 1000, abs=1000)
    standing = (v[:-1] == 0) & (v[1:] == 0)
    assert np.median(gaps[standing]) == pytest.approx(interval * 3000, abs=1000)
    cols = fix_columns(drv, t, rep, rng)
    assert (cols["speed_kmh"][v == 0] == 0).all()
    assert (cols["speed_kmh"][v > 1] > 0).all()
    lon, lat, _ = path.locate(cols["s"])
    err = np.hypot((cols["lon"] - lon) * 106_000, (cols["lat"] - lat) * 111_000)
    assert 1.0 < np.median(err) < 8.0 and err.max() < 25.0
    assert ((cols["sats"] >= 7) & (cols["sats"] <= 14)).all()
