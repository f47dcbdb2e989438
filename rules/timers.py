"""Wall-clock rules, driven by ``Engine.tick(now_ms)`` (the engine never reads a clock).

- activation of planned trips at ``planned_start``;
- SIGNAL_LOST: no message from any of an active trip's devices for >= ``signal_lost_s`` of
  arrival (wall) time, counted from activation if nothing was heard; the episode ends on the
  next message (lifecycle.touch_trips);
- LATE_ARRIVAL: a stop not entered by its ``eta`` + ``late_tolerance_min``; once per stop.

All three are array comparisons over every trip slot, so ``tick`` costs microseconds per
thousand trips and can run every second.
"""

from __future__ import annotations

import math

import numpy as np

from rules.context import Ctx
from rules.emit import episode_key
from rules.events import AlarmType
from rules.lifecycle import activate, update_late_deadline
from rules.state import ACTIVE, PLANNED, RC, TC, TripInfo, TripTable

__all__ = ["next_timer_ms", "run_timers"]


def run_timers(ctx: Ctx, now_ms: int) -> None:
    """Fire every wall-clock rule due at ``now_ms``."""
    trips = ctx.trips
    live = trips.gen >= 0
    status = trips.m[:, TC.STATUS]
    for slot in np.flatnonzero(
        live & (status == PLANNED) & (trips.planned_start <= now_ms)
    ).tolist():
        activate(ctx, slot, int(trips.planned_start[slot]), "planned_start", now_ms)
    active = live & (trips.m[:, TC.STATUS] == ACTIVE)
    unknown = active & np.isnan(trips.heard)
    trips.heard[unknown] = now_ms
    lost = (
        active
        & ~trips.signal_open
        & (now_ms - trips.heard >= trips.rules[:, RC.SIGNAL_LOST_S] * 1000.0)
    )
    for slot in np.flatnonzero(lost).tolist():
        _signal_lost(ctx, slot, now_ms)
    for slot in np.flatnonzero(active & (trips.next_late <= now_ms)).tolist():
        _late_arrivals(ctx, slot, now_ms)


def _reporting_device(ctx: Ctx, info: TripInfo) -> str:
    """The device of the trip's last valid fix, else its first device."""
    dev = ctx.trips.m[info.slot, TC.VALID_DEV]
    return info.plan.devices[0] if math.isnan(dev) else ctx.devices.ids[int(dev)]


def _last_position(trips: TripTable, slot: int) -> dict[str, float]:
    m = trips.m[slot]
    if math.isnan(m[TC.VALID_TS]):
        return {}
    return {"lon": float(m[TC.VALID_LON]), "lat": float(m[TC.VALID_LAT])}


def _signal_lost(ctx: Ctx, slot: int, now_ms: int) -> None:
    trips = ctx.trips
    info = trips.info[slot]
    assert info is not None
    m = trips.m[slot]
    last = m[TC.LAST_TS] if not math.isnan(m[TC.LAST_TS]) else m[TC.ACTIVE_SINCE]
    threshold_ms = trips.rules[slot, RC.SIGNAL_LOST_S] * 1000.0
    key = episode_key(info.trip_id, AlarmType.SIGNAL_LOST, last)
    n = 2
    while key in info.emitted:  # silent again with no newer event time: a fresh episode
        key = episode_key(info.trip_id, AlarmType.SIGNAL_LOST, last, n)
        n += 1
    trips.signal_open[slot] = True
    info.signal_episode = key
    ts = int(last + threshold_ms)
    ctx.emit.alarm(
        info,
        AlarmType.SIGNAL_LOST,
        _reporting_device(ctx, info),
        ts,
        key,
        details={
            "last_message_ts": int(last) if not math.isnan(m[TC.LAST_TS]) else None,
            "last_heard_at": int(trips.heard[slot]),
            "silent_s": round(float(now_ms - trips.heard[slot]) / 1000.0, 1),
            "signal_lost_s": float(threshold_ms) / 1000.0,
            "devices": list(info.plan.devices),
        },
        arrival_ms=ts,  # found live by the clock, never "late"
        **_last_position(trips, slot),
    )


def _late_arrivals(ctx: Ctx, slot: int, now_ms: int) -> None:
    trips = ctx.trips
    info, prog = trips.info[slot], trips.progress[slot]
    assert info is not None and prog is not None
    tol_min = float(trips.rules[slot, RC.LATE_TOLERANCE_MIN])
    base = int(trips.stop_base[slot])
    for i, stop in enumerate(info.plan.stops):
        eta = trips.st_eta[base + i]
        deadline = eta + tol_min * 60_000.0
        if not math.isfinite(eta) or prog.arrived[i] >= 0 or i in info.late_done:
            continue
        if deadline > now_ms:
            continue
        info.late_done.add(i)
        ctx.emit.alarm(
            info,
            AlarmType.LATE_ARRIVAL,
            _reporting_device(ctx, info),
            int(deadline),
            episode_key(info.trip_id, AlarmType.LATE_ARRIVAL, stop.stop_id),
            details={
                "stop_id": stop.stop_id,
                "eta": int(eta),
                "late_tolerance_min": tol_min,
                "deadline": int(deadline),
            },
            arrival_ms=int(deadline),
            **_last_position(trips, slot),
        )
    update_late_deadline(trips, slot)


def next_timer_ms(trips: TripTable) -> int | None:
    """Earliest wall time at which ``tick`` has something to do (None: nothing pending)."""
    live = trips.gen >= 0
    status = trips.m[:, TC.STATUS]
    planned = live & (status == PLANNED)
    active = live & (status == ACTIVE)
    candidates = [np.inf]
    if planned.any():
        candidates.append(float(trips.planned_start[planned].min()))
    if active.any():
        waiting = active & ~trips.signal_open
        if waiting.any():
            heard = trips.heard[waiting]
            if np.isnan(heard).any():
                candidates.append(-np.inf)
            else:
                sig = heard + trips.rules[waiting, RC.SIGNAL_LOST_S] * 1000.0
                candidates.append(float(sig.min()))
        candidates.append(float(trips.next_late[active].min()))
    best = min(candidates)
    if best == np.inf:
        return None
    return math.ceil(best) if best != -np.inf else -(2**62)
