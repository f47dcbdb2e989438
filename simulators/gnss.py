"""A GNSS error model: what real receivers and mobile networks do to a tracker's reports.

The default reporting noise (a few metres, every fix good) is far cleaner than a real
receiver. Each part below can be switched on alone (:class:`GnssErrors`), and every draw is
seeded from the trip's entropy, so a noisy trip repeats byte for byte:

- ``drift``: while the truck stands, the reported position wanders as a mean-reverting random
  walk (Ornstein-Uhlenbeck: σ 12–22 m per axis, τ 5–15 min, capped at 60 m), hdop rises
  and the satellite count falls the longer it stands, and speed reads 0–2.5 km/h.
- ``multipath``: while driving (mostly on urban streets), bursts of 1–4 consecutive fixes
  thrown 50–300 m off, with hdop 3–8 and 4–6 satellites.
- ``tunnels``: 30–150 s with neither fixes nor network (lock events then carry no position);
  what was held is sent as a backlog on the way out.
- ``gaps``: coverage gaps of 1.5–7 min without network; fixes are stored and sent as a
  JSON-array backlog when the network returns (store-and-forward).
- ``delivery``: 3 % of messages sent twice, 5 % delayed by up to 20 s (out of order).
- ``skew``: each device's clock runs 1–5 s fast or slow (``ts`` = true time + skew).

:func:`place_errors` puts the episodes on a solved drive away from the trip's fences, global
geofences, incidents and quiet ranges, so a scenario's expected alarms still hold; a tunnel or
gap never leaves a trip silent near ``signal_lost_s`` (600 s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import shapely
from shapely.geometry import shape

from simulators.errors import ScenarioError
from simulators.truck import STANDING_MS, Drive

if TYPE_CHECKING:
    from simulators.draft import Draft

#: grid of the drift walk, ms
DRIFT_STEP_MS = 5_000
#: a standing receiver's hdop/sats have fully degraded after this long, s
DEGRADE_S = 1_200.0


@dataclass(frozen=True, slots=True)
class GnssErrors:
    """Which error sources are on, and their sizes (defaults as in the module docstring)."""

    drift: bool = False
    multipath: bool = False
    tunnels: bool = False
    gaps: bool = False
    delivery: bool = False
    skew: bool = False
    drift_sigma_m: tuple[float, float] = (12.0, 22.0)
    drift_tau_s: tuple[float, float] = (300.0, 900.0)
    drift_cap_m: float = 60.0
    multipath_per_h: float = 4.0
    multipath_m: tuple[float, float] = (50.0, 300.0)
    multipath_fixes: tuple[int, int] = (1, 4)
    tunnels_per_h: float = 0.8
    tunnel_s: tuple[float, float] = (30.0, 150.0)
    gaps_per_h: float = 0.6
    gap_s: tuple[float, float] = (90.0, 420.0)
    duplicate_p: float = 0.03
    late_p: float = 0.05
    late_max_s: float = 20.0
    skew_s: tuple[int, int] = (1, 5)

    @property
    def active(self) -> bool:
        """Any source switched on."""
        return any((self.drift, self.multipath, self.tunnels, self.gaps, self.delivery, self.skew))


#: the named noise kinds (``build_scenario(..., noise=...)``, the quality bench)
NOISE_KINDS: dict[str, GnssErrors] = {
    "clean": GnssErrors(),
    "drift": GnssErrors(drift=True),
    "multipath": GnssErrors(multipath=True),
    "gaps": GnssErrors(tunnels=True, gaps=True),
    "delivery": GnssErrors(delivery=True),
    "skew": GnssErrors(skew=True),
    "all": GnssErrors(
        drift=True, multipath=True, tunnels=True, gaps=True, delivery=True, skew=True
    ),
}


def noise_errors(kind: str | GnssErrors) -> GnssErrors:
    """The error model of a noise kind name (or the model itself)."""
    if isinstance(kind, GnssErrors):
        return kind
    try:
        return NOISE_KINDS[kind]
    except KeyError:
        raise ScenarioError(
            f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_KINDS)}"
        ) from None


# -- drift -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pull:
    """From ``t0_ms`` to ``t1_ms`` the drift leans towards ``(dx_m, dy_m)`` (satellite
    geometry changing over a parked truck), reverting with ``tau_s``, spread ``sigma_m``."""

    t0_ms: int
    t1_ms: int
    dx_m: float
    dy_m: float
    tau_s: float = 45.0
    sigma_m: float = 4.0


@dataclass(frozen=True, slots=True)
class DriftWindow:
    """One standing period ``[a_ms, b_ms]`` with its walk's size."""

    a_ms: int
    b_ms: int
    sigma_m: float
    tau_s: float
    cap_m: float
    pulls: tuple[Pull, ...] = ()


@dataclass(frozen=True, slots=True)
class Drift:
    """The drift of one truck: its standing windows and the seed of their walks."""

    seed: tuple[int, ...]
    windows: tuple[DriftWindow, ...]


@lru_cache(maxsize=512)
def _walk(seed: tuple[int, ...], k: int, w: DriftWindow) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (metres east, north) on the window's 5 s grid: an OU walk starting at 0 (the
    receiver has just stopped), clipped radially at ``cap_m``."""
    n = int((w.b_ms - w.a_ms) // DRIFT_STEP_MS) + 2
    z = np.random.default_rng([*seed, k]).normal(size=(n, 2)).tolist()
    xs, ys = [0.0] * n, [0.0] * n
    x = y = 0.0
    dt = DRIFT_STEP_MS / 1000.0
    for i in range(1, n):
        t = w.a_ms + i * DRIFT_STEP_MS
        mx = my = 0.0
        tau, sig = w.tau_s, w.sigma_m
        for p in w.pulls:
            if p.t0_ms <= t < p.t1_ms:
                mx, my, tau, sig = p.dx_m, p.dy_m, p.tau_s, p.sigma_m
        al = math.exp(-dt / tau)
        sd = sig * math.sqrt(1.0 - al * al)
        x = mx + (x - mx) * al + sd * z[i][0]
        y = my + (y - my) * al + sd * z[i][1]
        r = math.hypot(x, y)
        if r > w.cap_m:
            x, y = x * w.cap_m / r, y * w.cap_m / r
        xs[i], ys[i] = x, y
    return np.array(xs), np.array(ys)


def drift_at(
    drift: Drift | None, t_ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drift offsets east/north (m) at times ``t_ms``, seconds since the standing window
    began, and a mask of the times inside a window. Pure: the same time always gives the
    same offset, whichever other times are asked."""
    t = np.asarray(t_ms, dtype=np.float64)
    dx, dy = np.zeros(len(t)), np.zeros(len(t))
    since = np.zeros(len(t))
    inside = np.zeros(len(t), dtype=bool)
    if drift is None:
        return dx, dy, since, inside
    for k, w in enumerate(drift.windows):
        m = (t >= w.a_ms) & (t <= w.b_ms)
        if not m.any():
            continue
        xs, ys = _walk(drift.seed, k, w)
        grid = w.a_ms + np.arange(len(xs)) * float(DRIFT_STEP_MS)
        dx[m] = np.interp(t[m], grid, xs)
        dy[m] = np.interp(t[m], grid, ys)
        since[m] = (t[m] - w.a_ms) / 1000.0
        inside |= m
    return dx, dy, since, inside


def degrade(
    hdop: np.ndarray,
    sats: np.ndarray,
    since_s: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A standing receiver's quality: hdop up by 1.5–4, 3–6 satellites fewer once fully
    degraded (linear over ``DEGRADE_S``), never below 4 satellites."""
    n = len(hdop)
    f = np.where(mask, np.minimum(since_s / DEGRADE_S, 1.0), 0.0)
    up = rng.uniform(1.5, 4.0, n)
    lost = rng.integers(3, 7, n)
    h = np.round(np.asarray(hdop, dtype=np.float64) + f * up, 1)
    s = np.where(mask, np.maximum(np.asarray(sats) - np.round(f * lost).astype(int), 4), sats)
    return h, s


# -- bursts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Burst:
    """The ``n`` fixes at or after ``at_ms`` are thrown ``(dx_m, dy_m)`` off (each ±20 %)."""

    at_ms: int
    n: int
    dx_m: float
    dy_m: float


# -- placement -------------------------------------------------------------------------------


class _Room:
    """Where and when an error episode may go on one drive."""

    def __init__(
        self, d: Draft, drv: Drive, actions_ms: list[int], halt_kinds: list[str], margin_m: float
    ) -> None:
        p = drv.path
        fr = d.road.frame
        x, y = fr.to_xy(p.lon, p.lat)
        bad = np.zeros(len(p.s), dtype=bool)
        for flon, flat, r in d.fence_centres():
            fx, fy = fr.to_xy(np.array([flon]), np.array([flat]))
            bad |= np.hypot(x - fx[0], y - fy[0]) <= r + margin_m
        pts = shapely.points(x, y)
        for g in d.geofences:
            geom = shape(g["geometry"])
            geom = shapely.transform(geom, lambda c: np.column_stack(fr.to_xy(c[:, 0], c[:, 1])))
            bad |= np.asarray(shapely.distance(pts, geom)) <= margin_m
        for a, b in d.quiet:
            bad |= (p.s >= a - 300.0) & (p.s <= b + 300.0)
        self.bad_cum = np.concatenate([[0], np.cumsum(bad)])
        self.drv = drv
        busy: list[tuple[int, int]] = []
        m = d.marks
        if "incident" in m:
            busy.append((m["incident"] - 600_000, m.get("incident_end", m["incident"]) + 600_000))
        if "blackout_start" in m:
            busy.append((m["blackout_start"] - 600_000, m["blackout_end"] + 600_000))
        busy += [(a - 600_000, b + 600_000) for a, b in (*d.gps_outages, *d.blackouts)]
        # halts (red lights aside: a burst or gap there changes nothing a rule sees)
        busy += [
            (a - 180_000, b + 180_000)
            for (a, b), kind in zip(drv.halt_windows, halt_kinds, strict=True)
            if kind != "traffic"
        ]
        busy += [(t - 180_000, t + 180_000) for t in actions_ms]
        busy += [(b.at_ms - 300_000, b.at_ms + 300_000) for b in d.bursts]
        if d.jump is not None:
            busy.append((d.jump.at_ms - 300_000, d.jump.at_ms + 300_000))
        self.busy = busy
        self.lo = drv.depart_ms + 180_000
        self.hi = drv.end_ms - 180_000

    def free(self, t0: int, t1: int) -> bool:
        """No busy time and no forbidden stretch of road between ``t0`` and ``t1``."""
        if t0 < self.lo or t1 > self.hi:
            return False
        if any(not (b < t0 or a > t1) for a, b in self.busy):
            return False
        s, _ = self.drv.at(np.array([t0, t1], dtype=np.float64))
        j0, j1 = np.searchsorted(self.drv.path.s, s)
        return bool(self.bad_cum[min(j1 + 1, len(self.bad_cum) - 1)] == self.bad_cum[j0])

    def take(self, t0: int, t1: int, pad_ms: int) -> None:
        self.busy.append((t0 - pad_ms, t1 + pad_ms))


def _episodes(
    room: _Room,
    rng: np.random.Generator,
    per_h: float,
    dur_s: tuple[float, float],
    pad_ms: int,
    pred: Callable[[int], bool] | None = None,
) -> list[tuple[int, int]]:
    """At least one (when there is room), else Poisson(rate × driving hours) episodes."""
    hours = max(room.hi - room.lo, 0) / 3_600_000.0
    want = max(1, int(rng.poisson(per_h * hours)))
    out: list[tuple[int, int]] = []
    for _ in range(want * 25):
        if len(out) == want or room.hi <= room.lo:
            break
        t0 = int(rng.uniform(room.lo, room.hi))
        t1 = t0 + int(rng.uniform(*dur_s) * 1000)
        if pred is not None and not pred(t0):
            continue
        if room.free(t0, t1):
            room.take(t0, t1, pad_ms)
            out.append((t0, t1))
    return out


def standing_windows(drv: Drive, on_ms: int, off_ms: int) -> list[tuple[int, int]]:
    """When the truck stands: before departure, at every halt, after arrival."""
    out = [(on_ms, drv.depart_ms)] if drv.depart_ms > on_ms else []
    out += [(a, b) for a, b in drv.halt_windows if b > a]
    if off_ms > drv.end_ms:
        out.append((drv.end_ms, off_ms))
    return out


def place_errors(
    d: Draft,
    drv: Drive,
    errors: GnssErrors,
    off_ms: int,
    actions_ms: list[int],
    halt_kinds: list[str],
) -> None:
    """Put the switched-on error sources of ``errors`` on draft ``d`` (solved as ``drv``):
    drift windows, bursts, tunnels (outage + held network), gaps (held network), delivery
    quirks and device clock skew. Seeded from the draft's entropy."""
    if not errors.active:
        return
    rng = np.random.default_rng([*d.entropy, 0x6E55])
    room = _Room(d, drv, actions_ms, halt_kinds, 400.0)
    if errors.drift:
        taken = [(w.a_ms, w.b_ms) for w in d.drift_windows]
        for a, b in standing_windows(drv, d.start_ms, off_ms):
            if any(not (y < a or x > b) for x, y in taken):
                continue
            d.drift_windows.append(
                DriftWindow(
                    a,
                    b,
                    float(rng.uniform(*errors.drift_sigma_m)),
                    float(rng.uniform(*errors.drift_tau_s)),
                    errors.drift_cap_m,
                )
            )
    if errors.multipath:
        # a burst lasts ≤ 4 fixes (≤ 64 s); urban streets first (4 in 5 elsewhere refused)
        urban = drv.path.limit_kmh < 50.0

        def canyon(t0: int) -> bool:
            s, v = drv.at(np.array([t0, t0 + 70_000], dtype=np.float64))
            j = min(int(np.searchsorted(drv.path.s, s[0])), len(urban) - 1)
            moving = bool((v > STANDING_MS).all())
            return moving and (bool(urban[j]) or not urban.any() or rng.random() < 0.2)

        for t0, _ in _episodes(room, rng, errors.multipath_per_h, (70.0, 70.0), 120_000, canyon):
            ang = float(rng.uniform(0.0, 2 * math.pi))
            r = float(rng.uniform(*errors.multipath_m))
            n = int(rng.integers(errors.multipath_fixes[0], errors.multipath_fixes[1] + 1))
            d.bursts.append(Burst(t0, n, r * math.sin(ang), r * math.cos(ang)))
    if errors.tunnels:
        for t0, t1 in _episodes(room, rng, errors.tunnels_per_h, errors.tunnel_s, 600_000):
            d.gps_outages.append((t0, t1))
            d.blackouts.append((t0, t1))
    if errors.gaps:
        for t0, t1 in _episodes(room, rng, errors.gaps_per_h, errors.gap_s, 600_000):
            d.blackouts.append((t0, t1))
    if errors.delivery:
        d.duplicate_p, d.late_p, d.late_max_s = (
            errors.duplicate_p,
            errors.late_p,
            errors.late_max_s,
        )
    if errors.skew:

        def skew() -> int:
            lo, hi = errors.skew_s
            return int(rng.integers(lo, hi + 1)) * 1000 * int(rng.choice([-1, 1]))

        gps = replace(d.gps, skew_ms=skew())
        d.lock = gps if d.combined else replace(d.lock, skew_ms=skew())
        d.gps = gps


__all__ = [
    "NOISE_KINDS",
    "Burst",
    "Drift",
    "DriftWindow",
    "GnssErrors",
    "Pull",
    "degrade",
    "drift_at",
    "noise_errors",
    "place_errors",
    "standing_windows",
]
