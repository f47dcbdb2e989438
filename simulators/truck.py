"""Truck kinematics and GPS fixes, vectorised with numpy.

A :class:`DrivePlan` says where the truck goes (a :class:`~simulators.roads.Path`), when it
leaves, where it halts and for how long, and how it drives (pace, speed zones). :func:`drive`
turns it into a :class:`Drive`: a speed profile with limited acceleration and braking, solved
on the whole path at once — the forward and backward passes of ``v² ≤ v_prev² + 2·a·ds`` are
cumulative minima, so no per-vertex Python loop. Between vertices the acceleration is
constant, which makes the reported speed and the distance travelled agree exactly.

:func:`fix_times` and :func:`fix_columns` sample a drive the way a tracker reports: every
10–15 s while moving, every 2nd or 3rd of those while standing (never 60 s or more apart),
with a few metres of noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulators.roads import FloatArray, IntArray, Path

#: standing still below this speed, m/s
STANDING_MS = 0.3


@dataclass(frozen=True, slots=True)
class Halt:
    """The truck stands at path ``vertex`` for ``dwell_s`` seconds."""

    vertex: int
    dwell_s: float
    kind: str  # "stop" (consignee), "traffic", "rest", "incident"
    ref: str = ""  # e.g. the stop id


@dataclass(frozen=True, slots=True)
class SpeedZone:
    """Along-path range ``[s0, s1]`` metres where the speed is capped at ``kmh`` (traffic),
    or set to it regardless of the road (``force``: a driver speeding)."""

    s0: float
    s1: float
    kmh: float
    force: bool = False


@dataclass(frozen=True, eq=False)
class DrivePlan:
    """Everything that decides a truck's motion; small, so it can be kept and re-driven."""

    path: Path
    depart_ms: int
    halts: tuple[Halt, ...] = ()
    zones: tuple[SpeedZone, ...] = ()
    pace: float = 1.0  # the driver's factor on the road's cruising speed
    max_kmh: float = 82.0
    accel: float = 0.8  # m/s², a loaded truck
    decel: float = 1.2


@dataclass(frozen=True, eq=False)
class Drive:
    """A solved drive: knots of time (ms, float), along-path metres and speed (m/s); halts
    are pairs of knots with the same position and zero speed."""

    path: Path
    t_ms: FloatArray
    s: FloatArray
    v: FloatArray
    vertex_arrive_ms: FloatArray  # first arrival at each path vertex
    halt_windows: tuple[tuple[int, int], ...]  # (arrive, leave) ms of each plan halt, in order

    @property
    def depart_ms(self) -> int:
        """Time the wheels start turning."""
        return int(self.t_ms[0])

    @property
    def end_ms(self) -> int:
        """Time the truck reaches the end of its path."""
        return int(self.t_ms[-1])

    def at(self, t_ms: NDArray) -> tuple[FloatArray, FloatArray]:
        """Along-path position (m) and speed (m/s) at times ``t_ms``; standing at the start
        before departure and at the end after arrival."""
        t = np.asarray(t_ms, dtype=np.float64)
        k = np.clip(np.searchsorted(self.t_ms, t, side="right") - 1, 0, len(self.t_ms) - 2)
        t0, t1 = self.t_ms[k], self.t_ms[k + 1]
        span = (t1 - t0) / 1000.0
        tau = np.clip((t - t0) / 1000.0, 0.0, span)
        v0, v1 = self.v[k], self.v[k + 1]
        v = v0 + (v1 - v0) * np.divide(tau, span, out=np.zeros_like(tau), where=span > 0)
        s = np.minimum(self.s[k] + tau * (v0 + v) / 2.0, self.s[k + 1])
        return s, v

    def time_at(self, s: float | FloatArray) -> FloatArray:
        """First time (ms) the truck reaches along-path position ``s``."""
        return np.asarray(np.interp(s, self.path.s, self.vertex_arrive_ms))


def target_speeds(plan: DrivePlan) -> FloatArray:
    """Per-vertex target speed, km/h: the road's limit times the driver's pace, capped, then
    the speed zones."""
    p = plan.path
    u = np.minimum(p.limit_kmh * plan.pace, plan.max_kmh)
    for z in plan.zones:
        m = (p.s >= z.s0) & (p.s <= z.s1)
        u[m] = z.kmh if z.force else np.minimum(u[m], z.kmh)
    return u


def drive(plan: DrivePlan) -> Drive:
    """Solve the speed profile and timing of a plan."""
    p = plan.path
    s = p.s
    n = len(s)
    cap = (target_speeds(plan) / 3.6) ** 2
    dwell = np.zeros(n)
    for h in plan.halts:
        dwell[h.vertex] += h.dwell_s
    halted = dwell > 0
    cap[halted] = 0.0
    cap[0] = cap[-1] = 0.0
    # forward pass: w_i = min_j≤i (cap_j + 2a(s_i - s_j)), a cumulative minimum
    fa = 2.0 * plan.accel * s
    w = fa + np.minimum.accumulate(cap - fa)
    # backward pass (braking): w_i = min_j≥i (w_j + 2b(s_j - s_i))
    fb = 2.0 * plan.decel * s
    w = np.minimum.accumulate((w + fb)[::-1])[::-1] - fb
    v = np.sqrt(np.maximum(w, 0.0))
    ds = np.diff(s)
    if ((v[:-1] == 0.0) & (v[1:] == 0.0) & (ds > 0)).any():
        # standing at both ends of a segment (two halts one segment apart, or a halt next to
        # the start or the end) leaves no knot to move on: plans keep halts apart
        raise ValueError("halts on adjacent path vertices; plans keep halts apart")
    # constant acceleration within a segment: dt = 2·ds / (v0 + v1)
    dt = np.divide(2.0 * ds, v[:-1] + v[1:], out=np.zeros_like(ds), where=ds > 0)
    run = np.concatenate([[0.0], np.cumsum(dt)])
    waited = np.cumsum(dwell) - dwell  # dwell spent before reaching each vertex
    arrive = plan.depart_ms + (run + waited) * 1000.0
    reps = 1 + (dwell > 0)
    idx = np.repeat(np.arange(n), reps)
    t_knots = arrive[idx]
    second = np.concatenate([[False], idx[1:] == idx[:-1]])
    t_knots[second] += dwell[idx[second]] * 1000.0
    windows = tuple(
        (int(arrive[h.vertex]), int(arrive[h.vertex] + dwell[h.vertex] * 1000.0))
        for h in plan.halts
    )
    return Drive(p, t_knots, s[idx], np.where(second, 0.0, v[idx]), arrive, windows)


@dataclass(frozen=True, slots=True)
class Reporting:
    """How a tracker reports: every ``interval_s`` while moving, every ``idle_every``-th of
    those while standing (``interval_s * idle_every`` ≤ 45 s), ``noise_m`` 1-σ per axis."""

    interval_s: int = 15
    idle_every: int = 2
    noise_m: float = 3.0


def fix_times(
    drv: Drive,
    on_ms: int,
    off_ms: int,
    rep: Reporting,
    rng: np.random.Generator,
    outages: Sequence[tuple[int, int]] = (),
) -> IntArray:
    """Whole-second fix times between ``on_ms`` and ``off_ms`` (±1 s jitter), thinned while
    standing, none inside ``outages`` (no GPS reception)."""
    first = -(-on_ms // 1000) * 1000
    n = max((off_ms - first) // (rep.interval_s * 1000) + 1, 1)
    k = np.arange(n)
    t = first + k * rep.interval_s * 1000 + rng.integers(-1, 2, n) * 1000
    t[0] = first
    t = t[t <= off_ms]
    _, v = drv.at(t)
    keep = (v > STANDING_MS) | (k[: len(t)] % rep.idle_every == 0)
    for a, b in outages:
        keep &= (t < a) | (t >= b)
    return t[keep].astype(np.int64)


def fix_columns(
    drv: Drive, t_ms: IntArray, rep: Reporting, rng: np.random.Generator
) -> dict[str, NDArray]:
    """Position, speed, heading and quality of fixes at ``t_ms`` (noise included)."""
    n = len(t_ms)
    s, v = drv.at(t_ms)
    lon, lat, bearing = drv.path.locate(s)
    k_lat = 111_000.0
    k_lon = k_lat * np.cos(np.radians(lat))
    noise = rng.normal(0.0, rep.noise_m, (2, n))
    moving = v > STANDING_MS
    speed = np.where(moving, np.maximum(v * 3.6 + rng.normal(0.0, 0.6, n), 0.1), 0.0)
    heading = (bearing + rng.normal(0.0, 1.5, n)) % 360.0
    return {
        "lat": lat + noise[1] / k_lat,
        "lon": lon + noise[0] / k_lon,
        "speed_kmh": speed,
        "heading_deg": heading,
        "hdop": np.round(0.6 + rng.gamma(2.0, 0.2, n), 1),
        "sats": rng.integers(7, 15, n),
        "s": s,
    }
