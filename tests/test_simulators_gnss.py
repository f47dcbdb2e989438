"""simulators.gnss: each part of the GNSS error model, seeded and deterministic, alone and on
a real trip (compared with the same trip without it)."""

from __future__ import annotations

import functools
import itertools
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import NOISE_KINDS, ScenarioError, SimTrip, build_fleet, build_scenario
from simulators.gnss import (
    Drift,
    DriftWindow,
    GnssErrors,
    Pull,
    degrade,
    drift_at,
    noise_errors,
    standing_windows,
)
from simulators.reference import parse_ts
from simulators.truck import drive

START = 1_795_334_400_000
SIGNAL_LOST_MS = 600_000


@functools.cache
def trip(noise: str, seed: int = 2, name: str = "normal") -> SimTrip:
    return build_scenario(name, seed=seed, start_ms=START, noise=noise)


def elements(t: SimTrip, topic: str = "position") -> list[dict]:
    """Every element of the trip's messages on ``topic``, with publish time and array flag."""
    out = []
    for m in t.iter_messages():
        if m.topic_suffix != topic:
            continue
        doc = orjson.loads(m.payload)
        for el in doc if isinstance(doc, list) else [doc]:
            out.append({**el, "_at": m.at_ms, "_array": isinstance(doc, list)})
    return out


def by_seq(els: list[dict]) -> dict[int, dict]:
    return {e["seq"]: e for e in els}


def metres(a: dict, b: dict) -> float:
    k = 111_195.0
    dx = (a["lon"] - b["lon"]) * k * np.cos(np.radians(a["lat"]))
    return float(np.hypot(dx, (a["lat"] - b["lat"]) * k))


# -- the model alone ---------------------------------------------------------------------------


def test_noise_kinds_and_unknown_kind() -> None:
    assert set(NOISE_KINDS) == {"clean", "drift", "multipath", "gaps", "delivery", "skew", "all"}
    assert not NOISE_KINDS["clean"].active and NOISE_KINDS["all"].active
    for kind, model in NOISE_KINDS.items():
        assert noise_errors(kind) is model
    own = GnssErrors(drift=True, drift_cap_m=10.0)
    assert noise_errors(own) is own
    with pytest.raises(ScenarioError, match="unknown noise kind 'fog'"):
        noise_errors("fog")
    with pytest.raises(ScenarioError, match="unknown noise kind"):
        build_scenario("normal", start_ms=START, noise="fog")


WINDOW = DriftWindow(START, START + 2 * 3_600_000, 18.0, 600.0, 60.0)


def test_drift_is_a_capped_walk_of_tens_of_metres_starting_at_zero() -> None:
    drift = Drift((7,), (WINDOW,))
    t = np.arange(START, START + 2 * 3_600_000, 5_000)
    dx, dy, since, inside = drift_at(drift, t)
    r = np.hypot(dx, dy)
    assert inside.all() and r[0] == 0.0
    assert r.max() <= 60.0 + 1e-9
    assert 8.0 < float(np.sqrt((r**2).mean())) < 45.0  # tens of metres, not 3
    assert r.max() > 25.0
    assert since[0] == 0.0 and since[-1] == pytest.approx((t[-1] - START) / 1000.0)
    # outside every window: nothing
    out = drift_at(drift, np.array([START - 1, START + 3 * 3_600_000]))
    assert not out[3].any() and not out[0].any() and not out[1].any()
    assert drift_at(None, t)[3].sum() == 0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    times=st.lists(st.integers(0, 2 * 3_600_000), min_size=1, max_size=30),
    cap=st.floats(5.0, 80.0),
)
def test_drift_is_pure_and_capped(seed: int, times: list[int], cap: float) -> None:
    w = DriftWindow(START, START + 2 * 3_600_000, 20.0, 400.0, cap)
    drift = Drift((seed,), (w,))
    t = START + np.array(times)
    dx, dy, _, _ = drift_at(drift, t)
    assert (np.hypot(dx, dy) <= cap + 1e-9).all()
    # the same instant gives the same offset whichever other instants are asked with it
    for k in range(len(t)):
        one = drift_at(drift, t[k : k + 1])
        assert one[0][0] == dx[k] and one[1][0] == dy[k]


def test_a_pull_leans_the_drift_towards_its_target() -> None:
    pull = Pull(START + 1_800_000, START + 2_400_000, 40.0, 0.0)
    drift = Drift((3,), (DriftWindow(START, START + 3_600_000, 12.0, 600.0, 60.0, (pull,)),))
    t = np.arange(START + 1_920_000, START + 2_400_000, 5_000)  # after 2 minutes of leaning
    dx, dy, _, _ = drift_at(drift, t)
    assert 25.0 < dx.mean() < 50.0 and abs(dy.mean()) < 10.0
    assert (dx > 20.0).all()


def test_degrade_raises_hdop_and_drops_satellites_the_longer_it_stands() -> None:
    rng = np.random.default_rng(1)
    hdop, sats = np.full(5, 0.9), np.full(5, 11)
    since = np.array([0.0, 300.0, 1200.0, 5000.0, 5000.0])
    mask = np.array([True, True, True, True, False])
    h, s = degrade(hdop, sats, since, mask, rng)
    assert h[0] == 0.9 and s[0] == 11
    assert 0.9 < h[1] < h[2] and 2.4 <= h[2] <= 4.9 and 2.4 <= h[3] <= 4.9
    assert s[2] <= 8 and s[3] <= 8 and (s >= 4).all()
    assert h[4] == 0.9 and s[4] == 11  # moving: untouched


def test_standing_windows_cover_origin_halts_and_end() -> None:
    t = trip("clean")
    sc = t.script
    assert sc is not None
    drv = drive(sc.plan)
    wins = standing_windows(drv, sc.on_ms, sc.off_ms)
    assert wins[0] == (sc.on_ms, drv.depart_ms) and wins[-1] == (drv.end_ms, sc.off_ms)
    assert len(wins) == len(drv.halt_windows) + 2


# -- each part on a real trip, against the same trip without it ----------------------------------


def test_clean_is_the_default_and_every_kind_repeats_byte_for_byte() -> None:
    default = build_scenario("normal", seed=2, start_ms=START)
    assert [m.payload for m in default.messages] == [m.payload for m in trip("clean").messages]
    for kind in NOISE_KINDS:
        again = build_scenario("normal", seed=2, start_ms=START, noise=kind)
        assert [(m.payload, m.at_ms) for m in again.messages] == [
            (m.payload, m.at_ms) for m in trip(kind).messages
        ]
    assert [m.payload for m in trip("all").messages] != [m.payload for m in trip("clean").messages]


def test_drift_moves_standing_fixes_only() -> None:
    clean, noisy = by_seq(elements(trip("clean"))), by_seq(elements(trip("drift")))
    assert clean.keys() == noisy.keys()
    sc = trip("drift").script
    assert sc is not None and sc.drift is not None
    wins = [(w.a_ms, w.b_ms) for w in sc.drift.windows]
    moved = []
    for seq, c in clean.items():
        n = noisy[seq]
        standing = any(a <= parse_ts(c["ts"]) <= b for a, b in wins)
        if not standing:
            assert n == c  # moving fixes: the very same bytes
            continue
        moved.append(metres(n, c))
        assert n["speed_kmh"] <= 2.5 and n["sats"] >= 4
    assert moved and max(moved) > 15.0 and max(moved) <= 60.0 + 1.0
    assert max(e["hdop"] for e in noisy.values()) > max(e["hdop"] for e in clean.values()) + 1.0


def test_multipath_throws_runs_of_one_to_four_fixes_50_to_300_m_off() -> None:
    clean, noisy = by_seq(elements(trip("clean"))), by_seq(elements(trip("multipath")))
    assert clean.keys() == noisy.keys()
    off = sorted(s for s in clean if metres(clean[s], noisy[s]) > 1e-3)
    assert off
    for s in off:
        assert 50 * 0.8 - 1 <= metres(clean[s], noisy[s]) <= 300 * 1.2 + 1
        assert 3.0 <= noisy[s]["hdop"] <= 8.0 and 4 <= noisy[s]["sats"] <= 6
    # runs of consecutive fixes (seq is consecutive per fix on a GPS-only device or close
    # to it on a combined unit: split where the next thrown fix is not the next fix)
    order = sorted(clean)
    pos = {s: k for k, s in enumerate(order)}
    runs, n = [], 1
    for a, b in itertools.pairwise(off):
        if pos[b] == pos[a] + 1:
            n += 1
        else:
            runs.append(n)
            n = 1
    runs.append(n)
    assert all(1 <= r <= 4 for r in runs)
    sc = trip("multipath").script
    assert sc is not None and len(sc.bursts) == len(runs) >= 1


def test_tunnels_and_gaps_hold_fixes_and_send_them_as_a_backlog() -> None:
    t = trip("gaps", seed=0)
    sc = t.script
    assert sc is not None and sc.gps_outages and sc.blackouts
    fixes = elements(t)
    ts = np.array([parse_ts(e["ts"]) for e in fixes])
    for a, b in sc.gps_outages:  # tunnels: no fixes at all
        assert not ((ts >= a) & (ts < b)).any()
    gaps = [w for w in sc.blackouts if w not in sc.gps_outages]
    assert gaps
    for a, b in gaps:  # coverage gaps: fixes kept, sent in arrays when coverage returns
        held = [e for e, x in zip(fixes, ts, strict=True) if a <= x < b]
        assert held and all(e["_array"] and e["_at"] >= b for e in held)
        assert 90_000 <= b - a <= 420_000
    # never silent near signal_lost_s
    ats = sorted({m.at_ms for m in t.messages})
    assert max(np.diff(ats)) < SIGNAL_LOST_MS - 60_000
    # the fixes outside tunnels are the clean trip's
    clean = {e["seq"] for e in elements(trip("clean", seed=0))}
    assert {e["seq"] for e in fixes} <= clean


def test_delivery_duplicates_and_delays_by_at_most_20_s() -> None:
    t = trip("delivery", seed=3)
    payloads = Counter(m.payload for m in t.messages)
    assert sum(v - 1 for v in payloads.values()) >= 1 and max(payloads.values()) == 2
    assert set(payloads) == {m.payload for m in trip("clean", seed=3).messages}
    late = []
    for m in t.messages:
        lag = m.at_ms - parse_ts(orjson.loads(m.payload)["ts"])
        assert 0 <= lag <= 20_000
        late.append(lag)
    assert sum(x > 0 for x in late) >= 3
    ts = [parse_ts(orjson.loads(m.payload)["ts"]) for m in t.messages]
    assert any(b < a for a, b in itertools.pairwise(ts))  # out of event-time order


@pytest.mark.parametrize("seed", range(4))
def test_clock_skew_is_a_few_whole_seconds_per_device(seed: int) -> None:
    t = trip("skew", seed=seed)
    skews: dict[str, set[int]] = {}
    for m in t.messages:
        skews.setdefault(m.device_id, set()).add(parse_ts(orjson.loads(m.payload)["ts"]) - m.at_ms)
    for dev, s in skews.items():
        assert len(s) == 1, dev
        (k,) = s
        assert k % 1000 == 0 and 1_000 <= abs(k) <= 5_000


def test_errors_stay_away_from_fences() -> None:
    """Bursts, tunnels and gaps are placed ≥ 400 m from every trip fence (so they cannot
    touch arrivals, dwell or unlocks)."""
    for seed in range(4):
        t = trip("all", seed=seed)
        sc = t.script
        assert sc is not None
        drv = drive(sc.plan)
        fences = [t.trip["origin"], *t.trip["stops"]]
        for at in [b.at_ms for b in sc.bursts] + [a for a, _ in sc.blackouts]:
            s, _ = drv.at(np.array([at], dtype=float))
            lon, lat, _ = drv.path.locate(s)
            for f in fences:
                flon, flat = f["geometry"]["coordinates"]
                d = metres({"lon": lon[0], "lat": lat[0]}, {"lon": flon, "lat": flat})
                assert d > f["radius_m"] + 390.0


def test_a_mixed_fleet_mixes_kinds() -> None:
    fleet = build_fleet(40, seed=2, start_ms=START, noise="mixed")
    kinds = Counter(
        (
            t.script.drift is not None,
            bool(t.script.bursts),
            bool(t.script.blackouts),
            t.script.duplicate_p > 0,
            t.script.gps.skew_ms != 0,
        )
        for t in fleet
        if t.script is not None
    )
    assert len(kinds) >= 4
    skewed = sum(k[4] for k in kinds.elements())
    assert 10 <= skewed <= 35
    assert kinds[(False, False, False, False, False)] >= 1  # some are clean
