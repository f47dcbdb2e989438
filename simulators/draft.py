"""A trip in the making: the normal trip every scenario starts from, and the finishing steps
that turn a draft into a :class:`~simulators.model.SimTrip`.

Order of work: :func:`new_draft` picks the road, consignees, devices and timing; a scenario
edits the draft (detour, extra halts, speed zones, transport quirks) and may register hooks
that run once the drive is solved (placing events at the right time, checking that its
incident came out as intended); :func:`finish` then adds traffic, solves the drive, derives
ETAs and the lock's custody sequence and writes the trip document.

Normal trips are clean under the contract's default thresholds, with margins: ≤ 85 km/h,
halts outside fences ≤ 75 s, consignee dwell ≤ 45 min (limit 120), ETAs after the actual
arrival, lock batteries ≥ 35 %, a fix at least every 47 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone

import numpy as np

from simulators.elock import LockAction, StopVisit, custody, unseal_ms
from simulators.errors import ScenarioError
from simulators.gnss import Burst, Drift, DriftWindow, GnssErrors, place_errors
from simulators.model import SimMessage, SimTrip
from simulators.payloads import EPOCH_MS, RFC3339, DeviceSpec
from simulators.roads import ORIGIN_RADIUS_M, STOP_RADIUS_M, Path, Road, RoadAtlas, RoadStop
from simulators.script import Jump, TruckScript
from simulators.truck import Drive, DrivePlan, Halt, Reporting, SpeedZone, drive

#: Cairns local time (Australia/Brisbane, no daylight saving) for plan times
LOCAL_TZ = timezone(timedelta(hours=10))
CORRIDOR_M = 500
MAX_DWELL_MIN = 120
SHIPPER_NAMES = {"pg": "P&G", "unilever": "Unilever"}
_MIN_STOP_GAP_M = 2_000.0


def iso_local(t_ms: int) -> str:
    """RFC 3339 in Cairns local time, whole seconds."""
    return datetime.fromtimestamp(t_ms / 1000.0, tz=LOCAL_TZ).isoformat(timespec="seconds")


def iso_utc(t_ms: int) -> str:
    """RFC 3339 UTC with ``Z``."""
    return datetime.fromtimestamp(t_ms / 1000.0, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class DeviceIds:
    """Ids for a GPS tracker + separate e-lock, or for one combined GPS e-lock."""

    gps: str
    lock: str
    unit: str


@dataclass(eq=False)
class Draft:
    """Mutable trip under construction (see the module docstring)."""

    name: str
    rng: np.random.Generator
    entropy: tuple[int, ...]
    road: Road
    trip_id: str
    shipper: str
    vehicle: str
    start_ms: int
    gps: DeviceSpec
    lock: DeviceSpec
    consignees: list[RoadStop]  # in road order; the last is the road's end
    plan_order: list[int]  # plan position -> consignee index
    dwell_s: dict[int, float]  # intermediate consignee index -> dwell
    seal_ms: int
    planned_start_ms: int
    depart_ms: int
    path: Path | None = None
    road_to_path: Callable[[int], int] | None = None
    halts: list[Halt] = field(default_factory=list)
    zones: list[SpeedZone] = field(default_factory=list)
    quiet: list[tuple[float, float]] = field(default_factory=list)  # path ranges, no traffic
    pace: float = 1.0
    depart_delay_s: float = 0.0
    eta_from_nominal: bool = False
    actions: list[LockAction] = field(default_factory=list)
    gps_outages: list[tuple[int, int]] = field(default_factory=list)
    blackouts: list[tuple[int, int]] = field(default_factory=list)
    redeliver_s: float = 0.0
    jump: Jump | None = None
    extras: list[SimMessage] = field(default_factory=list)
    expected: list[dict] = field(default_factory=list)
    expected_dead_letters: list[dict] = field(default_factory=list)
    geofences: list[dict] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    after: list[Callable[[Draft, Drive], None]] = field(default_factory=list)
    # GNSS errors (simulators.gnss): the noise kind, and episodes placed by it or a scenario
    errors: GnssErrors = field(default_factory=GnssErrors)
    bursts: list[Burst] = field(default_factory=list)
    drift_windows: list[DriftWindow] = field(default_factory=list)
    duplicate_p: float = 0.0
    late_p: float = 0.0
    late_max_s: float = 0.0
    park_vertex: dict[int, int] = field(default_factory=dict)  # consignee -> halt vertex
    # set by finish() before the hooks run, so a hook may edit them
    etas: dict[str, int] = field(default_factory=dict)
    custody: list[LockAction] = field(default_factory=list)

    # -- helpers for scenarios ---------------------------------------------------------------

    @property
    def combined(self) -> bool:
        """One device publishes both topics."""
        return self.gps.device_id == self.lock.device_id

    def the_path(self) -> Path:
        """The driven path (the road itself unless a scenario spliced in a detour)."""
        return self.path if self.path is not None else self.road.path

    def path_vertex(self, road_vertex: int) -> int:
        """Path vertex of a road vertex."""
        if self.road_to_path is not None:
            return self.road_to_path(road_vertex)
        return int(self.road.path.source_index[road_vertex])

    def consignee_path_vertices(self) -> list[int]:
        """Path vertices of the consignees, in road order."""
        return [self.path_vertex(c.vertex) for c in self.consignees]

    def fence_centres(self) -> list[tuple[float, float, float]]:
        """(lon, lat, radius) of the origin and every consignee fence."""
        o = self.road.stops[0]
        out = [(o.lon, o.lat, ORIGIN_RADIUS_M)]
        out += [(c.lon, c.lat, STOP_RADIUS_M) for c in self.consignees]
        return out

    def clear_of_fences(self, lon: float, lat: float, margin_m: float) -> bool:
        """True when a point is more than ``margin_m`` outside every trip fence."""
        fr = self.road.frame
        px, py = fr.to_xy(np.array([lon]), np.array([lat]))
        for flon, flat, r in self.fence_centres():
            fx, fy = fr.to_xy(np.array([flon]), np.array([flat]))
            if math.hypot(px[0] - fx[0], py[0] - fy[0]) <= r + margin_m:
                return False
        return True

    def busy_ranges(self, margin_m: float) -> list[tuple[float, float]]:
        """Path ranges taken by consignee halts, the ends, quiet ranges and extra halts."""
        p = self.the_path()
        out = [
            (0.0, margin_m + ORIGIN_RADIUS_M),
            (p.length_m - margin_m - STOP_RADIUS_M, p.length_m),
        ]
        for v in self.consignee_path_vertices():
            out.append((p.s[v] - margin_m - STOP_RADIUS_M, p.s[v] + margin_m + STOP_RADIUS_M))
        out += [(a - margin_m, b + margin_m) for a, b in self.quiet]
        out += [(p.s[h.vertex] - margin_m, p.s[h.vertex] + margin_m) for h in self.halts]
        return out

    def free_s(
        self, lo_frac: float, hi_frac: float, margin_m: float, tries: int = 40
    ) -> list[float]:
        """Random along-path positions in a fraction range, clear of busy ranges."""
        p = self.the_path()
        busy = self.busy_ranges(margin_m)
        out = []
        for s in self.rng.uniform(lo_frac * p.length_m, hi_frac * p.length_m, tries):
            if all(not (a <= s <= b) for a, b in busy):
                out.append(float(s))
        return out

    def alarm(self, type_: str, device_id: str | None = None, **details: object) -> None:
        """Record an expected alarm."""
        exp: dict = {"type": type_, "trip_id": self.trip_id}
        if device_id is not None:
            exp["device_id"] = device_id
        exp["details"] = dict(details)
        self.expected.append(exp)


def _device_specs(rng: np.random.Generator, ids: DeviceIds) -> tuple[DeviceSpec, DeviceSpec]:
    combined = bool(rng.random() < 0.4)
    interval = int(rng.choice([10, 12, 15]))
    rep = Reporting(interval_s=interval, idle_every=3, noise_m=float(rng.uniform(2.0, 4.0)))

    def flavour() -> dict:
        return {
            "ts_style": RFC3339 if rng.random() < 0.5 else EPOCH_MS,
            "seq0": int(rng.integers(1, 50_000)),
            "echo_id": bool(rng.random() < 0.3),
            "firmware": "3.1.7" if rng.random() < 0.3 else None,
        }

    if combined:
        unit = DeviceSpec(
            ids.unit,
            "combined",
            battery0=float(rng.uniform(55, 100)),
            drain_per_h=float(rng.uniform(0.5, 2.0)),
            reporting=rep,
            heartbeat_s=600,
            **flavour(),
        )
        return unit, unit
    gps = DeviceSpec(
        ids.gps, "gps", battery0=float(rng.uniform(95, 100)), reporting=rep, **flavour()
    )
    lock = DeviceSpec(
        ids.lock,
        "lock",
        battery0=float(rng.uniform(55, 100)),
        drain_per_h=float(rng.uniform(0.5, 2.0)),
        heartbeat_s=300,
        **flavour(),
    )
    return gps, lock


def _pick_consignees(
    rng: np.random.Generator, road: Road, want: int, exact: bool = True
) -> list[RoadStop]:
    """``want`` (or, not ``exact``, up to ``want``) intermediate consignees ≥ 2 km apart
    (and from both ends) whose fences the road crosses cleanly, then the road's last stop."""
    s = road.s
    cands = road.consignee_candidates
    order = rng.permutation(len(cands))
    chosen: list[RoadStop] = []
    for i in order:
        if len(chosen) == want:
            break
        st = cands[int(i)]
        if all(abs(s[st.vertex] - s[c.vertex]) >= _MIN_STOP_GAP_M for c in chosen):
            chosen.append(st)
    if exact and len(chosen) < want:
        raise ScenarioError("not enough consignee stops", shape_id=road.shape_id, want=want)
    chosen.sort(key=lambda st: s[st.vertex])
    return [*chosen, road.stops[-1]]


def _plate(rng: np.random.Generator) -> str:
    letters = "".join(chr(ord("A") + int(x)) for x in rng.integers(0, 26, 3))
    return f"{int(rng.integers(100, 1000))} {letters}"


def new_draft(
    name: str,
    entropy: tuple[int, ...],
    atlas: RoadAtlas,
    *,
    start_ms: int,
    trip_id: str,
    shipper: str,
    ids: DeviceIds,
    road: Road | None = None,
    intermediates: int | None = None,
    rng: np.random.Generator | None = None,
) -> Draft:
    """A normal trip on ``road`` (or a random one): 0–2 intermediate consignees, devices on,
    sealed within 5 min, planned start at +10 min, departure within 3 min of it."""
    rng = rng if rng is not None else np.random.default_rng(list(entropy))
    road = road if road is not None else atlas.roads[int(rng.integers(len(atlas)))]
    want = int(rng.integers(0, 3)) if intermediates is None else intermediates
    consignees = _pick_consignees(rng, road, want, exact=intermediates is not None)
    gps, lock = _device_specs(rng, ids)
    seal = start_ms + int(rng.integers(120, 300)) * 1000 + int(rng.integers(1, 1000))
    planned = -(-(start_ms + 600_000) // 60_000) * 60_000
    depart = planned + int(rng.integers(-60, 180)) * 1000
    return Draft(
        name=name,
        rng=rng,
        entropy=entropy,
        road=road,
        trip_id=trip_id,
        shipper=shipper,
        vehicle=_plate(rng),
        start_ms=start_ms,
        gps=gps,
        lock=lock,
        consignees=consignees,
        plan_order=list(range(len(consignees))),
        dwell_s={i: float(rng.uniform(15, 40)) * 60.0 for i in range(len(consignees) - 1)},
        seal_ms=seal,
        planned_start_ms=planned,
        depart_ms=depart,
        pace=float(rng.uniform(0.92, 1.03)),
    )


def _traffic(d: Draft) -> tuple[list[Halt], list[SpeedZone]]:
    """Red lights on urban streets (≈ 1 per 4 km below 50 km/h, 15–75 s) and, on some trips,
    one congested stretch (10–20 km/h over 300–1,000 m), away from everything else."""
    p = d.the_path()
    rng = d.rng
    busy = d.busy_ranges(400.0)
    urban = np.flatnonzero(p.limit_kmh < 50.0)
    lights: list[Halt] = []
    n = int(rng.poisson(0.25 * len(urban) * p.length_m / max(len(p.s), 1) / 1000.0))
    taken: list[float] = []
    for v in rng.choice(urban, size=min(n, len(urban)), replace=False) if len(urban) else []:
        s = float(p.s[v])
        if any(a <= s <= b for a, b in busy) or any(abs(s - t) < 300 for t in taken):
            continue
        taken.append(s)
        lights.append(Halt(int(v), float(rng.uniform(15, 75)), "traffic"))
    zones: list[SpeedZone] = []
    if rng.random() < 0.4:
        length = float(rng.uniform(300, 1000))
        for s0 in rng.uniform(0, max(p.length_m - length, 1.0), 10):
            s1 = s0 + length
            if all(b < s0 - 300 or a > s1 + 300 for a, b in busy) and all(
                t < s0 - 200 or t > s1 + 200 for t in taken
            ):
                zones.append(SpeedZone(float(s0), float(s1), float(rng.uniform(10, 20))))
                break
    return lights, zones


def _consignee_halts(d: Draft) -> list[Halt]:
    verts = [d.park_vertex.get(i, v) for i, v in enumerate(d.consignee_path_vertices())]
    return [
        Halt(verts[i], d.dwell_s[i], "stop", f"S{d.plan_order.index(i) + 1}")
        for i in range(len(d.consignees) - 1)
    ]


def make_plan(d: Draft, lights: list[Halt], zones: list[SpeedZone], depart_ms: int) -> DrivePlan:
    """The drive plan of a draft."""
    halts = sorted([*_consignee_halts(d), *d.halts, *lights], key=lambda h: h.vertex)
    verts = [h.vertex for h in halts]
    if len(set(verts)) != len(verts):
        raise ScenarioError("two halts at one vertex", trip_id=d.trip_id)
    return DrivePlan(d.the_path(), depart_ms, tuple(halts), tuple([*d.zones, *zones]), pace=d.pace)


def _eta(arrive_ms: float, rng: np.random.Generator) -> int:
    """An ETA 10–25 min after the actual arrival, rounded up to 5 min."""
    t = int(arrive_ms) + int(rng.uniform(10, 25) * 60_000)
    return -(-t // 300_000) * 300_000


def _point(lon: float, lat: float) -> dict:
    return {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]}


def finish(d: Draft) -> SimTrip:
    """Traffic, drive, scenario hooks, ETAs, custody, trip document."""
    lights, zones = _traffic(d)
    depart = d.depart_ms + int(d.depart_delay_s * 1000)
    plan = make_plan(d, lights, zones, depart)
    drv = drive(plan)
    nominal = drive(replace(plan, depart_ms=d.depart_ms)) if d.eta_from_nominal else drv
    # arrival (halt start) per consignee, road order
    windows = {
        h.ref: w for h, w in zip(plan.halts, drv.halt_windows, strict=True) if h.kind == "stop"
    }
    nominal_w = {
        h.ref: w for h, w in zip(plan.halts, nominal.halt_windows, strict=True) if h.kind == "stop"
    }
    visits: list[StopVisit] = []
    etas: dict[str, int] = {}
    for i, _c in enumerate(d.consignees):
        sid = f"S{d.plan_order.index(i) + 1}"
        last = i == len(d.consignees) - 1
        if last:
            arrive, leave = drv.end_ms, drv.end_ms
            nominal_arrive = nominal.end_ms
        else:
            arrive, leave = windows[sid]
            nominal_arrive = nominal_w[sid][0]
        visits.append(StopVisit(sid, arrive, leave, last))
        etas[sid] = _eta(nominal_arrive, d.rng)
        d.marks[f"arrived:{sid}"] = int(arrive)
        if not last:
            d.marks[f"left:{sid}"] = int(leave)
    d.etas = etas
    d.custody = custody(d.seal_ms, visits, d.rng)
    for hook in d.after:
        hook(d, drv)
    etas = d.etas
    actions = d.custody + d.actions
    unsealed = unseal_ms(actions)
    off = unsealed + int(d.rng.integers(180, 360)) * 1000
    place_errors(d, drv, d.errors, off, [a.ts_ms for a in actions], [h.kind for h in plan.halts])
    d.marks.update(
        power_on=d.start_ms,
        sealed=d.seal_ms,
        planned_start=d.planned_start_ms,
        departed=drv.depart_ms,
        unsealed=unsealed,
        power_off=off,
    )
    script = TruckScript(
        entropy=(*d.entropy, 1),
        plan=plan,
        on_ms=d.start_ms,
        off_ms=off,
        gps=d.gps,
        lock=d.lock,
        actions=tuple(actions),
        gps_outages=tuple(d.gps_outages),
        blackouts=tuple(d.blackouts),
        redeliver_s=d.redeliver_s,
        jump=d.jump,
        extras=tuple(d.extras),
        drift=Drift((*d.entropy, 0xD1F7), tuple(d.drift_windows)) if d.drift_windows else None,
        bursts=tuple(d.bursts),
        duplicate_p=d.duplicate_p,
        late_p=d.late_p,
        late_max_s=d.late_max_s,
    )
    return SimTrip(
        trip=_trip_document(d, etas),
        devices=_device_documents(d),
        expected=d.expected,
        geofences=d.geofences,
        scenario=d.name,
        expected_dead_letters=d.expected_dead_letters,
        marks=dict(sorted(d.marks.items(), key=lambda kv: kv[1])),
        script=script,
    )


def _trip_document(d: Draft, etas: dict[str, int]) -> dict:
    origin = d.road.stops[0]
    stops = []
    for pos, ci in enumerate(d.plan_order):
        c = d.consignees[ci]
        sid = f"S{pos + 1}"
        stops.append(
            {
                "stop_id": sid,
                "name": f"Consignee {sid} - {c.name}",
                "geometry": _point(c.lon, c.lat),
                "radius_m": int(STOP_RADIUS_M),
                "eta": iso_local(etas[sid]),
                "max_dwell_min": MAX_DWELL_MIN,
                "unlock_allowed": True,
            }
        )
    devices = [d.gps.device_id] if d.combined else [d.lock.device_id, d.gps.device_id]
    return {
        "trip_id": d.trip_id,
        "shipper": d.shipper,
        "vehicle": d.vehicle,
        "devices": devices,
        "origin": {
            "name": f"{SHIPPER_NAMES.get(d.shipper, d.shipper)} DC - {origin.name}",
            "geometry": _point(origin.lon, origin.lat),
            "radius_m": int(ORIGIN_RADIUS_M),
        },
        "route": {"type": "LineString", "coordinates": d.road.coordinates},
        "corridor_m": CORRIDOR_M,
        "stops": stops,
        "planned_start": iso_local(d.planned_start_ms),
        "rules": {},
    }


def _device_documents(d: Draft) -> list[dict]:
    if d.combined:
        return [
            {
                "device_id": d.gps.device_id,
                "kind": "lock",
                "shipper": d.shipper,
                "topics": ["position", "lock"],
            }
        ]
    return [
        {"device_id": d.gps.device_id, "kind": "gps", "shipper": d.shipper, "topics": ["position"]},
        {"device_id": d.lock.device_id, "kind": "lock", "shipper": d.shipper, "topics": ["lock"]},
    ]
