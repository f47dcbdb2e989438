"""Trip life cycle (CONTRACT §3): activation, stop visits and milestones, completion.

planned -> active at ``planned_start`` (event time of a message, or the wall clock in
``tick``) or at the first ``locked`` event inside the origin fence; active -> completed at an
``unlocked`` event inside the last stop's fence after arrival there (or by the API), or
cancelled by the API. Milestones are emitted once per (kind, stop) and only while active.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.context import Ctx
from rules.emit import episode_key, milestone_key
from rules.events import AlarmType, MilestoneKind, TripStatus
from rules.state import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DC,
    PLANNED,
    RC,
    RESET_ON_ACTIVATION,
    TC,
    StopProgress,
    TripInfo,
    TripTable,
)

__all__ = [
    "activate",
    "close_episodes",
    "finish",
    "open_episodes",
    "restore_history",
    "stop_change",
    "touch_trips",
    "update_late_deadline",
]


def activate(ctx: Ctx, slot: int, ts: int, reason: str, arrival_ms: int) -> None:
    """planned -> active at event time ``ts``; rule counters start afresh."""
    trips = ctx.trips
    m = trips.m[slot]
    if m[TC.STATUS] != PLANNED:
        return
    m[TC.STATUS] = ACTIVE
    m[TC.ACTIVE_SINCE] = ts
    for col, value in RESET_ON_ACTIVATION.items():
        m[col] = value
    if math.isnan(trips.heard[slot]):
        # SIGNAL_LOST counts from activation when nothing was heard yet.
        trips.heard[slot] = arrival_ms
    info = trips.info[slot]
    assert info is not None
    ctx.emit.status(info, TripStatus.ACTIVE, ts, reason)
    update_late_deadline(trips, slot)
    ctx.status_changed.add(slot)


def touch_trips(
    ctx: Ctx, t: npt.NDArray[np.int64], ts: npt.NDArray[np.int64], arrival: npt.NDArray[np.int64]
) -> None:
    """Bookkeeping for any message of trips ``t`` (one message per trip): activation at
    ``planned_start`` by event time, last event time, last heard, end of signal loss."""
    trips = ctx.trips
    status = trips.m[t, TC.STATUS]
    start = trips.planned_start[t]
    for i in np.flatnonzero((status == PLANNED) & (ts >= start)).tolist():
        activate(ctx, int(t[i]), int(start[i]), "planned_start", int(arrival[i]))
    trips.m[t, TC.LAST_TS] = np.fmax(trips.m[t, TC.LAST_TS], ts)
    trips.heard[t] = np.fmax(trips.heard[t], arrival)
    for i in np.flatnonzero(trips.signal_open[t]).tolist():
        end_signal_lost(ctx, int(t[i]), int(ts[i]))


def end_signal_lost(ctx: Ctx, slot: int, ts: int, reason: str = "message received") -> None:
    """Close the open SIGNAL_LOST episode of a trip."""
    trips = ctx.trips
    info = trips.info[slot]
    assert info is not None
    trips.signal_open[slot] = False
    if info.signal_episode is not None:
        ctx.emit.ended(info, AlarmType.SIGNAL_LOST, info.signal_episode, ts, {"reason": reason})
        info.signal_episode = None


def update_late_deadline(trips: TripTable, slot: int) -> None:
    """Earliest LATE_ARRIVAL deadline among stops not yet arrived at nor alarmed."""
    info, prog = trips.info[slot], trips.progress[slot]
    if info is None or prog is None:
        return
    tol = trips.rules[slot, RC.LATE_TOLERANCE_MIN] * 60_000.0
    base = int(trips.stop_base[slot])
    best = math.inf
    for i in range(int(trips.n_stops[slot])):
        eta = trips.st_eta[base + i]
        if math.isfinite(eta) and prog.arrived[i] < 0 and i not in info.late_done:
            best = min(best, eta + tol)
    trips.next_late[slot] = best


def stop_change(
    ctx: Ctx,
    slot: int,
    old: int,
    new: int,
    ts: int,
    *,
    device_id: str | None,
    lon: float | None,
    lat: float | None,
    old_dwell_open: float,
    left_ts: int | None = None,
) -> None:
    """The truck left stop ``old`` and/or entered stop ``new`` (plan indices, -1 none).

    Milestones ``left`` / ``arrived`` once per stop and only while active; a DWELL_OVERTIME
    episode of the visit ends on leaving. ``left_ts``: when the truck left ``old`` (the
    first fix of the run that confirmed it; default ``ts``). State columns were already
    updated by the caller.
    """
    gone = ts if left_ts is None else left_ts
    trips = ctx.trips
    info, prog = trips.info[slot], trips.progress[slot]
    assert info is not None and prog is not None
    active = trips.m[slot, TC.STATUS] == ACTIVE
    if old >= 0:
        if not math.isnan(old_dwell_open):
            stop_id = info.plan.stops[old].stop_id
            key = episode_key(info.trip_id, AlarmType.DWELL_OVERTIME, stop_id, old_dwell_open)
            ctx.emit.ended(info, AlarmType.DWELL_OVERTIME, key, gone, {"stop_id": stop_id})
        if active and prog.arrived[old] >= 0 and prog.left[old] < 0:
            prog = prog.with_("left", old, gone)
            ctx.emit.milestone(
                info,
                MilestoneKind.LEFT,
                gone,
                stop_index=old,
                device_id=device_id,
                lon=lon,
                lat=lat,
            )
    if new >= 0 and active and prog.arrived[new] < 0:
        prog = prog.with_("arrived", new, ts)
        ctx.emit.milestone(
            info, MilestoneKind.ARRIVED, ts, stop_index=new, device_id=device_id, lon=lon, lat=lat
        )
        if new in info.late_done:
            _withdraw_late(ctx, slot, new, ts)
    trips.progress[slot] = prog
    trips.m[slot, TC.NEXT_STOP] = prog.next_arrival()
    update_late_deadline(trips, slot)


def _withdraw_late(ctx: Ctx, slot: int, index: int, ts: int) -> None:
    """LATE_ARRIVAL was raised for stop ``index`` (no data had shown it entered by the
    deadline), and late data now shows the trip entered it at ``ts``: within the deadline,
    the alarm is withdrawn (CONTRACT §4); after it, the alarm was right and stays."""
    trips = ctx.trips
    info = trips.info[slot]
    assert info is not None
    eta = float(trips.st_eta[int(trips.stop_base[slot]) + index])
    deadline = eta + float(trips.rules[slot, RC.LATE_TOLERANCE_MIN]) * 60_000.0
    if not ts <= deadline:
        return
    stop_id = info.plan.stops[index].stop_id
    ctx.emit.withdrawn(
        info,
        AlarmType.LATE_ARRIVAL,
        episode_key(info.trip_id, AlarmType.LATE_ARRIVAL, stop_id),
        ts,
        {"stop_id": stop_id, "arrived_at": int(ts), "deadline": int(deadline)},
    )


def open_episodes(
    trips: TripTable, devices_m: npt.NDArray[np.float64], slot: int
) -> dict[str, AlarmType]:
    """Episode keys currently open in the event-time state of a trip."""
    info = trips.info[slot]
    assert info is not None
    m = trips.m[slot]
    out: dict[str, AlarmType] = {}
    tid = info.trip_id
    for col, kind in (
        (TC.OFF_OPEN, AlarmType.ROUTE_DEVIATION),
        (TC.STOP_OPEN, AlarmType.LONG_STOP),
        (TC.SPEED_OPEN, AlarmType.SPEEDING),
    ):
        if not math.isnan(m[col]):
            out[episode_key(tid, kind, m[col])] = kind
    cur = int(m[TC.CUR_STOP])
    if cur >= 0 and not math.isnan(m[TC.DWELL_OPEN]):
        stop_id = info.plan.stops[cur].stop_id
        out[episode_key(tid, AlarmType.DWELL_OVERTIME, stop_id, m[TC.DWELL_OPEN])] = (
            AlarmType.DWELL_OVERTIME
        )
    for device_id, d in zip(info.plan.devices, info.device_slots, strict=True):
        row = devices_m[d]
        if not math.isnan(row[DC.BAT_OPEN]) and row[DC.BAT_TRIP] == slot:
            key = episode_key(tid, AlarmType.LOW_BATTERY, device_id, row[DC.BAT_OPEN])
            out[key] = AlarmType.LOW_BATTERY
    return out


def close_episodes(ctx: Ctx, slot: int, ts: int, reason: str) -> None:
    """End every open episode of a trip (it finished or was removed)."""
    info = ctx.trips.info[slot]
    assert info is not None
    for key, kind in open_episodes(ctx.trips, ctx.devices.m, slot).items():
        ctx.emit.ended(info, kind, key, ts, {"reason": reason})
    m = ctx.trips.m[slot]
    for col in (TC.OFF_OPEN, TC.STOP_OPEN, TC.SPEED_OPEN, TC.DWELL_OPEN):
        m[col] = math.nan
    for d in info.device_slots:
        if ctx.devices.m[d, DC.BAT_TRIP] == slot:
            ctx.devices.m[d, DC.BAT_OPEN] = math.nan
    if ctx.trips.signal_open[slot]:
        end_signal_lost(ctx, slot, ts, reason)


def finish(ctx: Ctx, slot: int, status: TripStatus, ts: int, reason: str) -> None:
    """active/planned -> completed or cancelled; open episodes end; the engine drops the
    trip at the end of the call."""
    trips = ctx.trips
    info = trips.info[slot]
    assert info is not None
    if trips.m[slot, TC.STATUS] in (COMPLETED, CANCELLED):
        return
    close_episodes(ctx, slot, ts, f"trip {status.value}")
    trips.m[slot, TC.STATUS] = COMPLETED if status == TripStatus.COMPLETED else CANCELLED
    if status == TripStatus.COMPLETED:
        ctx.emit.milestone(info, MilestoneKind.COMPLETED, ts, details={"reason": reason})
    ctx.emit.status(info, status, ts, reason)
    ctx.status_changed.add(slot)


def restore_history(trips: TripTable, slot: int, history: Iterable[Mapping[str, Any]]) -> None:
    """Re-apply previously emitted milestones / status events after a restart, so visited
    stops, sealing and departure survive and are not emitted again."""
    info, prog = trips.info[slot], trips.progress[slot]
    assert info is not None and prog is not None
    m = trips.m[slot]
    plan = info.plan
    for event in history:
        if not isinstance(event, Mapping):
            continue
        kind, ts = event.get("kind"), event.get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            continue
        ts = int(ts)
        if kind == "status":
            status = event.get("status")
            info.emitted.add(f"status:{status}")
            if status == TripStatus.ACTIVE.value:
                m[TC.ACTIVE_SINCE] = ts
            continue
        if not isinstance(kind, str):
            continue
        try:
            mk = MilestoneKind(kind)
        except ValueError:
            continue
        stop_id = event.get("stop_id")
        index = plan.stop_index(stop_id) if isinstance(stop_id, str) else None
        info.emitted.add(milestone_key(mk, stop_id if index is not None else None))
        if mk == MilestoneKind.SEALED:
            m[TC.SEALED] = m[TC.SEEN_ORIGIN] = 1.0
            if m[TC.DEPARTED] == 0.0:  # sealed at origin, not yet departed: still there
                m[TC.IN_ORIGIN] = 1.0
        elif mk == MilestoneKind.DEPARTED:
            m[TC.IN_ORIGIN] = 0.0
            m[TC.DEPARTED] = m[TC.SEEN_ORIGIN] = 1.0
        elif index is not None and mk == MilestoneKind.ARRIVED:
            prog = prog.with_("arrived", index, ts)
        elif index is not None and mk == MilestoneKind.UNSEALED:
            prog = prog.with_("unsealed", index, ts)
        elif index is not None and mk == MilestoneKind.LEFT:
            prog = prog.with_("left", index, ts)
    trips.progress[slot] = prog
    m[TC.NEXT_STOP] = prog.next_arrival()
    # A stop arrived at and not left: the truck is presumably still there; the next fix
    # confirms (or emits ``left``). The dwell timer continues from the arrival.
    for i in range(len(plan.stops) - 1, -1, -1):
        if prog.arrived[i] >= 0 and prog.left[i] < 0:
            m[TC.CUR_STOP] = i
            m[TC.VISIT_START] = prog.arrived[i]
            break
    update_late_deadline(trips, slot)


def reconcile_progress(
    old: TripInfo, old_prog: StopProgress, new_stop_ids: list[str]
) -> StopProgress:
    """Progress of a re-planned trip: kept per stop_id, new stops start unvisited."""
    by_id = {s.stop_id: i for i, s in enumerate(old.plan.stops)}
    arrived, unsealed, left = [], [], []
    for sid in new_stop_ids:
        i = by_id.get(sid)
        arrived.append(old_prog.arrived[i] if i is not None else -1)
        unsealed.append(old_prog.unsealed[i] if i is not None else -1)
        left.append(old_prog.left[i] if i is not None else -1)
    return StopProgress(tuple(arrived), tuple(unsealed), tuple(left))
