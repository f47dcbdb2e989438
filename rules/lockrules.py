"""E-lock rules (CONTRACT §3-§4), one event at a time (lock events are few).

- ``locked`` inside the origin fence: activates a planned trip, milestone ``sealed``.
- ``unlocked`` while active: position = the event's own lat/lon, else the last valid fix of
  any of the trip's devices no older than ``unlock_fix_max_age_s`` (event time).
  No position -> UNAUTHORIZED_UNLOCK with ``position_unknown``; outside every
  unlock-allowed stop -> UNAUTHORIZED_UNLOCK; inside the next unvisited unlock-allowed stop
  -> milestone ``unsealed``; inside another unlock-allowed stop -> UNLOCK_OUT_OF_SEQUENCE
  (again inside a stop already unsealed and not yet left: a repeat, nothing). Inside the
  last stop: arrival there is implied by the position and the trip completes.
- ``tamper`` / ``rope_cut`` / ``forced_open`` while active: LOCK_TAMPER, one per event.
- ``low_battery``, or ``battery_pct`` on any event: LOW_BATTERY (see fixrules).
"""

from __future__ import annotations

import math

import numpy as np

from rules.batch import LockCols
from rules.context import Ctx, Outcome
from rules.emit import episode_key
from rules.events import AlarmType, MilestoneKind, TripStatus
from rules.fixrules import apply_battery
from rules.lifecycle import activate, finish, stop_change, touch_trips
from rules.state import ACTIVE, DC, PLANNED, RC, TC
from telemetry.models import LockEvent, LockEventType

__all__ = ["apply_lock", "lock_position"]

TAMPER = {LockEventType.TAMPER, LockEventType.ROPE_CUT, LockEventType.FORCED_OPEN}
LOCKED, UNLOCKED = 1.0, 2.0


def lock_position(
    ctx: Ctx, slot: int, event: LockEvent, ts: int
) -> tuple[float, float, str] | None:
    """(lon, lat, source) of a lock event: its own position, else the trip's last valid
    fix when no older than ``unlock_fix_max_age_s``; None when neither is known."""
    lon, lat = event.lon, event.lat
    if (
        lon is not None
        and lat is not None
        and math.isfinite(lon)
        and math.isfinite(lat)
        and not (lon == 0.0 and lat == 0.0)
    ):
        return float(lon), float(lat), "event"
    m = ctx.trips.m[slot]
    age_ms = abs(ts - m[TC.VALID_TS])
    if age_ms <= ctx.trips.rules[slot, RC.UNLOCK_FIX_MAX_AGE_S] * 1000.0:  # False for NaN
        return float(m[TC.VALID_LON]), float(m[TC.VALID_LAT]), "last_fix"
    return None


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
    pos = lock_position(ctx, slot, event, ts)
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
                lon=pos[0] if pos else None,
                lat=pos[1] if pos else None,
                details=base,
                arrival_ms=arrival,
            )
        return
    in_origin, stops = (
        (False, []) if pos is None else ctx.geometry.fences_at(trips, slot, pos[0], pos[1])
    )
    if kind == LockEventType.LOCKED:
        if in_origin and pos is not None:  # in_origin implies a position
            m[TC.SEEN_ORIGIN] = 1.0
            if m[TC.STATUS] == PLANNED:
                activate(ctx, slot, ts, "sealed at origin", arrival)
            if m[TC.STATUS] == ACTIVE and m[TC.SEALED] == 0.0:
                m[TC.SEALED] = 1.0
                ctx.emit.milestone(
                    info,
                    MilestoneKind.SEALED,
                    ts,
                    device_id=device_id,
                    lon=pos[0],
                    lat=pos[1],
                    details={"method": base["method"]},
                )
        return
    if m[TC.STATUS] == ACTIVE:
        _unlocked(ctx, slot, ts, device_id, pos, stops, base, arrival)


def _arrive(
    ctx: Ctx, slot: int, index: int, ts: int, device_id: str, lon: float, lat: float
) -> None:
    """An unlock positioned inside stop ``index`` implies the truck is there."""
    m = ctx.trips.m[slot]
    prog = ctx.trips.progress[slot]
    assert prog is not None
    cur = int(m[TC.CUR_STOP])
    if cur == index:
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
    pos: tuple[float, float, str] | None,
    stops: list[int],
    base: dict[str, object],
    arrival: int,
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
    lon, lat, source = pos
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
            _arrive(ctx, slot, expected, ts, device_id, lon, lat)
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
            _arrive(ctx, slot, stop, ts, device_id, lon, lat)
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
    last = n - 1
    if n > 0 and last in stops:
        _arrive(ctx, slot, last, ts, device_id, lon, lat)
        finish(ctx, slot, TripStatus.COMPLETED, ts, "unlocked at final stop")
