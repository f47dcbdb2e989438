"""E-lock rules (CONTRACT §3-§4), one event at a time (lock events are few).

- ``locked`` inside the origin fence: activates a planned trip, milestone ``sealed``.
- ``unlocked`` while active: located by ``locate`` -- the trip's GPS fix nearest in time
  (within ``unlock_fix_max_age_s``) is the position, the lock's own position counts only
  within ``lock_gps_disagree_m`` of it (else recorded in ``details``, not trusted), or when
  no such fix exists; membership with hysteresis decides which fences hold it.
  No position -> UNAUTHORIZED_UNLOCK with ``position_unknown``; outside every
  unlock-allowed stop -> UNAUTHORIZED_UNLOCK; inside the next unvisited unlock-allowed stop
  -> milestone ``unsealed``; inside another unlock-allowed stop -> UNLOCK_OUT_OF_SEQUENCE
  (again inside a stop already unsealed and not yet left: a repeat, nothing). Placed in
  the last stop by the GPS (by the lock only when the trip has no GPS unit): arrival there
  is implied and the trip completes.
- ``tamper`` / ``rope_cut`` / ``forced_open`` while active: LOCK_TAMPER, one per event.
- ``low_battery``, or ``battery_pct`` on any event: LOW_BATTERY (see fixrules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geofence import distance_m
from rules.batch import LockCols
from rules.context import Ctx, Outcome
from rules.emit import episode_key
from rules.events import AlarmType, MilestoneKind, TripStatus
from rules.fixrules import apply_battery
from rules.lifecycle import activate, finish, stop_change, touch_trips
from rules.state import ACTIVE, DC, PLANNED, RC, TC
from telemetry.models import LockEvent, LockEventType

__all__ = ["Located", "apply_lock", "has_gps", "locate", "nearest_fix"]

TAMPER = {LockEventType.TAMPER, LockEventType.ROPE_CUT, LockEventType.FORCED_OPEN}
LOCKED, UNLOCKED = 1.0, 2.0


@dataclass(frozen=True, slots=True)
class Located:
    """Where a lock event happened, as far as the rules are concerned.

    ``lon``/``lat``/``source``: the position reported with the event's alarm or milestone
    (``event``: the lock's own, corroborated by the GPS when there is one; ``last_fix``: the
    trip's valid fix nearest in time). ``stops`` / ``in_origin``: the fences the event is
    inside of; ``gps_stops``: those the GPS alone places it in (None: no GPS fix within
    ``unlock_fix_max_age_s``). ``details``: what the alarm records about the disagreement.
    """

    lon: float
    lat: float
    source: str
    stops: list[int]
    in_origin: bool
    gps_stops: list[int] | None
    details: dict[str, object]


def _own_position(event: LockEvent) -> tuple[float, float] | None:
    lon, lat = event.lon, event.lat
    if (
        lon is not None
        and lat is not None
        and math.isfinite(lon)
        and math.isfinite(lat)
        and not (lon == 0.0 and lat == 0.0)
    ):
        return float(lon), float(lat)
    return None


def nearest_fix(ctx: Ctx, slot: int, ts: int) -> tuple[float, float, float] | None:
    """(lon, lat, ts) of the valid fix of any of the trip's devices nearest in time to
    ``ts``, when within ``unlock_fix_max_age_s`` (either side); else None."""
    info = ctx.trips.info[slot]
    assert info is not None
    rows = ctx.devices.m[list(info.device_slots)]
    age = np.abs(ts - rows[:, DC.VALID_TS])
    if not (age <= ctx.trips.rules[slot, RC.UNLOCK_FIX_MAX_AGE_S] * 1000.0).any():
        return None  # (NaN compares False: devices with no fix)
    k = int(np.nanargmin(age))
    return float(rows[k, DC.VALID_LON]), float(rows[k, DC.VALID_LAT]), float(rows[k, DC.VALID_TS])


def locate(ctx: Ctx, slot: int, event: LockEvent, ts: int) -> Located | None:
    """Locate a lock event (CONTRACT §4, v2): the truck's GPS fix nearest in time, within
    ``unlock_fix_max_age_s``, is the position; the lock's own position counts only when it
    lies within ``lock_gps_disagree_m`` of that fix (else it is recorded, not trusted), or
    when there is no such fix. When that fix is the trip's latest, membership with
    hysteresis decides the fences (a parked truck's drifted fix is still at its stop).
    None when no position is known."""
    trips = ctx.trips
    m = trips.m[slot]
    own = _own_position(event)
    gps = nearest_fix(ctx, slot, ts)
    if gps is None:
        if own is None:
            return None
        in_origin, stops = ctx.geometry.fences_at(trips, slot, own[0], own[1])
        return Located(own[0], own[1], "event", stops, in_origin, None, {})
    g_lon, g_lat, g_ts = gps
    g_origin, g_stops = ctx.geometry.fences_at(trips, slot, g_lon, g_lat)
    if g_ts == m[TC.VALID_TS] and g_lon == m[TC.VALID_LON] and g_lat == m[TC.VALID_LAT]:
        g_origin = g_origin or m[TC.IN_ORIGIN] == 1.0
        cur = int(m[TC.CUR_STOP])
        if cur >= 0 and cur not in g_stops:
            g_stops = sorted([*g_stops, cur])
    details: dict[str, object] = {"gps_fix_ts": int(g_ts)}
    if own is None:
        return Located(g_lon, g_lat, "last_fix", g_stops, g_origin, g_stops, details)
    apart = float(distance_m(own[0], own[1], g_lon, g_lat))
    details["disagreement_m"] = round(apart, 1)
    if apart > trips.rules[slot, RC.LOCK_GPS_DISAGREE_M]:
        details["lock_position"] = {"lat": own[1], "lon": own[0]}
        details["lock_position_trusted"] = False
        return Located(g_lon, g_lat, "last_fix", g_stops, g_origin, g_stops, details)
    o_origin, o_stops = ctx.geometry.fences_at(trips, slot, own[0], own[1])
    stops = sorted(set(g_stops) | set(o_stops))
    return Located(own[0], own[1], "event", stops, g_origin or o_origin, g_stops, details)


def has_gps(ctx: Ctx, slot: int, device: int) -> bool:
    """Whether a device of the trip other than ``device`` has ever had a valid fix."""
    info = ctx.trips.info[slot]
    assert info is not None
    others = [d for d in info.device_slots if d != device]
    return bool(others) and bool((~np.isnan(ctx.devices.m[others, DC.VALID_TS])).any())


def apply_lock(ctx: Ctx, locks: LockCols, j: int, slot: int, out: Outcome) -> None:
    """Apply lock event ``j`` of ``locks`` (trip slot ``slot``, -1 for none)."""
    event = locks.events[j]
    d, ts, seq = int(locks.dev[j]), int(locks.ts[j]), float(locks.seq[j])
    dm = ctx.devices.m
    last_ts, last_seq = dm[d, DC.LAST_TS], dm[d, DC.LAST_SEQ]
    if ts == last_ts and (seq == last_seq or (math.isnan(seq) and math.isnan(last_seq))):
        out.lock_dup[j] = True
        return
    if not ts < last_ts:
        dm[d, DC.LAST_TS], dm[d, DC.LAST_SEQ] = ts, seq
    recv = int(locks.recv[j])
    arrival = recv if recv > 0 else ctx.now_ms
    if slot < 0:
        return
    trips = ctx.trips
    one = np.array([slot], dtype=np.int64)
    touch_trips(ctx, one, np.array([ts]), np.array([arrival]))
    kind = event.event
    dev_rows = dm[[d]]
    apply_battery(
        ctx,
        dev_rows,
        np.array([d]),
        one,
        trips.rules[one],
        np.array([ts]),
        np.array([locks.battery[j]]),
        np.array([np.nan if event.lon is None else event.lon], dtype=float),
        np.array([np.nan if event.lat is None else event.lat], dtype=float),
        np.array([arrival]),
        np.array([trips.m[slot, TC.STATUS] == ACTIVE]),
        low_event=np.array([kind == LockEventType.LOW_BATTERY]),
    )
    dm[d] = dev_rows[0]
    info = trips.info[slot]
    assert info is not None
    device_id = ctx.devices.ids[d]
    m = trips.m[slot]
    if kind == LockEventType.LOCKED:
        m[TC.LOCK_STATE] = LOCKED
    elif kind == LockEventType.UNLOCKED:
        m[TC.LOCK_STATE] = UNLOCKED
    if kind not in TAMPER and kind not in (LockEventType.LOCKED, LockEventType.UNLOCKED):
        return
    pos = locate(ctx, slot, event, ts)
    base: dict[str, object] = {
        "event": kind.value,
        "method": None if event.method is None else event.method.value,
    }
    if kind in TAMPER:
        if m[TC.STATUS] == ACTIVE:
            ctx.emit.alarm(
                info,
                AlarmType.LOCK_TAMPER,
                device_id,
                ts,
                episode_key(info.trip_id, AlarmType.LOCK_TAMPER, device_id, ts),
                lon=pos.lon if pos else None,
                lat=pos.lat if pos else None,
                details={**base, **(pos.details if pos else {})},
                arrival_ms=arrival,
            )
        return
    if kind == LockEventType.LOCKED:
        if pos is not None and pos.in_origin:
            m[TC.SEEN_ORIGIN] = 1.0
            if m[TC.DEPARTED] == 0.0:  # placed in the origin: inside it (membership)
                m[TC.IN_ORIGIN], m[TC.ORIGIN_OUT] = 1.0, 0.0
            if m[TC.STATUS] == PLANNED:
                activate(ctx, slot, ts, "sealed at origin", arrival)
            if m[TC.STATUS] == ACTIVE and m[TC.SEALED] == 0.0:
                m[TC.SEALED] = 1.0
                ctx.emit.milestone(
                    info,
                    MilestoneKind.SEALED,
                    ts,
                    device_id=device_id,
                    lon=pos.lon,
                    lat=pos.lat,
                    details={"method": base["method"]},
                )
        return
    if m[TC.STATUS] == ACTIVE:
        _unlocked(ctx, slot, ts, device_id, pos, base, arrival, has_gps(ctx, slot, d))


def _arrive(
    ctx: Ctx,
    slot: int,
    index: int,
    ts: int,
    device_id: str,
    lon: float,
    lat: float,
    pos: Located,
) -> None:
    """An unlock positioned inside stop ``index`` implies arrival there. The trip enters the
    stop's fence (membership) only when the GPS places it there, or there is no GPS fix:
    a position the lock alone reports is no fix, and never completes the trip later."""
    m = ctx.trips.m[slot]
    prog = ctx.trips.progress[slot]
    assert prog is not None
    cur = int(m[TC.CUR_STOP])
    if cur == index or (pos.gps_stops is not None and index not in pos.gps_stops):
        if prog.arrived[index] < 0:
            stop_change(
                ctx,
                slot,
                -1,
                index,
                ts,
                device_id=device_id,
                lon=lon,
                lat=lat,
                old_dwell_open=math.nan,
            )
        return
    old_dwell = float(m[TC.DWELL_OPEN])
    m[TC.CUR_STOP] = index
    m[TC.STOP_OUT] = 0.0
    m[TC.VISIT_START] = ts
    m[TC.DWELL_OPEN] = math.nan
    stop_change(
        ctx, slot, cur, index, ts, device_id=device_id, lon=lon, lat=lat, old_dwell_open=old_dwell
    )


def _unlocked(
    ctx: Ctx,
    slot: int,
    ts: int,
    device_id: str,
    pos: Located | None,
    base: dict[str, object],
    arrival: int,
    gps_unit: bool,
) -> None:
    trips = ctx.trips
    info, emit = trips.info[slot], ctx.emit
    assert info is not None
    tid = info.trip_id
    if pos is None:
        emit.alarm(
            info,
            AlarmType.UNAUTHORIZED_UNLOCK,
            device_id,
            ts,
            episode_key(tid, AlarmType.UNAUTHORIZED_UNLOCK, device_id, ts),
            details={**base, "position_unknown": True},
            arrival_ms=arrival,
        )
        return
    lon, lat, source, stops = pos.lon, pos.lat, pos.source, pos.stops
    base = {**base, **pos.details}
    sb = int(trips.stop_base[slot])
    n = int(trips.n_stops[slot])
    unlock_ok = trips.st_unlock[sb : sb + n]
    allowed = [s for s in stops if unlock_ok[s]]
    stop_ids = [info.plan.stops[s].stop_id for s in stops]
    if not allowed:
        emit.alarm(
            info,
            AlarmType.UNAUTHORIZED_UNLOCK,
            device_id,
            ts,
            episode_key(tid, AlarmType.UNAUTHORIZED_UNLOCK, device_id, ts),
            details={**base, "position_source": source, "inside_stops": stop_ids},
            arrival_ms=arrival,
            lon=lon,
            lat=lat,
        )
    else:
        prog = trips.progress[slot]
        assert prog is not None
        expected = next((i for i in range(n) if unlock_ok[i] and not prog.visited(i)), None)
        if expected in allowed:
            assert expected is not None
            _arrive(ctx, slot, expected, ts, device_id, lon, lat, pos)
            prog = trips.progress[slot]
            assert prog is not None
            trips.progress[slot] = prog.with_("unsealed", expected, ts)
            emit.milestone(
                info,
                MilestoneKind.UNSEALED,
                ts,
                stop_index=expected,
                device_id=device_id,
                details={"method": base["method"]},
                lon=lon,
                lat=lat,
            )
        elif not any(prog.unsealed[s] >= 0 and prog.left[s] < 0 for s in allowed):
            stop = allowed[0]
            _arrive(ctx, slot, stop, ts, device_id, lon, lat, pos)
            prog = trips.progress[slot]
            assert prog is not None
            trips.progress[slot] = prog.with_("unsealed", stop, ts)
            emit.alarm(
                info,
                AlarmType.UNLOCK_OUT_OF_SEQUENCE,
                device_id,
                ts,
                episode_key(
                    tid,
                    AlarmType.UNLOCK_OUT_OF_SEQUENCE,
                    info.plan.stops[stop].stop_id,
                    device_id,
                    ts,
                ),
                details={
                    **base,
                    "stop_id": info.plan.stops[stop].stop_id,
                    "expected_stop_id": None
                    if expected is None
                    else info.plan.stops[expected].stop_id,
                    "position_source": source,
                },
                arrival_ms=arrival,
                lon=lon,
                lat=lat,
            )
    # Completed only by an unlock the GPS places at the last stop; a trip with no GPS unit
    # (a lock alone) by the lock's own position.
    last = n - 1
    placed = pos.gps_stops if pos.gps_stops is not None else ([] if gps_unit else stops)
    if n > 0 and last in placed:
        _arrive(ctx, slot, last, ts, device_id, lon, lat, pos)
        finish(ctx, slot, TripStatus.COMPLETED, ts, "unlocked at final stop")
