"""Durable rewind: a late trip re-run from stored history (CONTRACT §4, backlogs up to 24 h).

When late data is older than anything the in-memory journal can rewind (after a restart
there is no journal at all), and the engine was given a ``history`` callback, the trip is
re-run from its beginning: a start state fresh from its plan plus the stored messages of
its devices from the trip's start (planned start or activation, whichever is earlier) up
to the newest data it has processed, merged with the late ones. The lookback is bounded:
at most ``HISTORY_LOOKBACK_MS`` before that newest data; a trip running longer starts from
the state the bound implies (below). The engine stays pure: stored messages come in
through the callback, which may return them in any order and may include messages
already seen (they are de-duplicated).

The start state at ``since``: the initial trip row (planned, or active when activated
before ``since``); the sealed / departed / seen-origin flags and the lock state carried
over (they only gate milestones, which emitted keys suppress anyway); stop progress before
``since`` kept (a stop arrived at and not left by then is the current visit); alarm
episodes open now that began before ``since`` carried over, since they were open
throughout the window (their keys stay the same). Devices start from a fresh row (the
jump filter has no previous fix), keeping a LOW_BATTERY episode opened before ``since``.
Only devices currently reporting for the trip are re-run (a device that moved on to
another trip keeps its state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rules.batch import FixCols, LockCols
from rules.state import (
    ACTIVE,
    DC,
    DEVICE_ROW,
    GF_SINCE,
    GF_SLOT,
    PLANNED,
    TC,
    TRIP_ROW,
    DeviceTable,
    StopProgress,
    TripTable,
)
from telemetry.models import Fix, LockEvent

__all__ = ["HISTORY_LOOKBACK_MS", "History", "Start", "start_state"]

History = Callable[[Sequence[str], int, int], tuple[Sequence[Fix], Sequence[LockEvent]]]
"""``history(device_ids, since_ms, until_ms) -> (fixes, lock_events)``: stored messages of
those devices with ``since_ms <= ts <= until_ms``, in any order."""

HISTORY_LOOKBACK_MS = 24 * 3_600_000

F64 = npt.NDArray[np.float64]

# Columns carried with an episode that was open before the window (per episode column).
_EPISODE_COLS = {
    TC.OFF_OPEN: (TC.OFF_SINCE, TC.OFF_MAX, TC.OFF_COUNT),
    TC.STOP_OPEN: (TC.ANCHOR_TS, TC.ANCHOR_LON, TC.ANCHOR_LAT, TC.STOPPED_SINCE),
    TC.SPEED_OPEN: (TC.SPEED_SINCE, TC.SPEED_MAX),
}


@dataclass(slots=True)
class Start:
    """Where a durable re-run of one trip begins, and the stored messages it replays."""

    since: int
    until: int
    trip_row: F64
    device_rows: dict[int, F64]
    progress: StopProgress
    fixes: FixCols
    locks: LockCols


def _window(
    trips: TripTable, devices: DeviceTable, slot: int, owned: list[int], late_ts: int
) -> tuple[int, int]:
    m = trips.m[slot]
    seen = [m[TC.LAST_TS], *devices.m[owned, DC.LAST_TS].tolist(), float(late_ts)]
    until = int(np.nanmax(seen))
    begin = float(trips.planned_start[slot])
    if not np.isnan(m[TC.ACTIVE_SINCE]):
        begin = min(begin, float(m[TC.ACTIVE_SINCE]))
    since = max(int(min(begin, late_ts)), until - HISTORY_LOOKBACK_MS)
    return since, until


def _progress_before(prog: StopProgress, since: int) -> StopProgress:
    def cut(values: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(v if 0 <= v < since else -1 for v in values)

    return StopProgress(cut(prog.arrived), cut(prog.unsealed), cut(prog.left))


def _trip_row(cur: F64, prog: StopProgress, since: int) -> F64:
    row = TRIP_ROW.copy()
    active = cur[TC.STATUS] == ACTIVE and cur[TC.ACTIVE_SINCE] < since
    row[TC.STATUS] = ACTIVE if active else PLANNED
    for col in (TC.SEEN_ORIGIN, TC.SEALED, TC.DEPARTED, TC.LOCK_STATE):
        row[col] = cur[col]
    if row[TC.SEEN_ORIGIN] == 1.0 and row[TC.DEPARTED] == 0.0:
        row[TC.IN_ORIGIN] = 1.0  # not departed yet: still inside the origin
    # Geofence memberships begun before the window hold through it (no second entry).
    held = cur[GF_SINCE] < since  # False for NaN (free)
    row[GF_SLOT] = np.where(held, cur[GF_SLOT], -1.0)
    row[GF_SINCE] = np.where(held, cur[GF_SINCE], np.nan)
    row[TC.NEXT_STOP] = prog.next_arrival()
    if not active:
        return row
    row[TC.ACTIVE_SINCE] = cur[TC.ACTIVE_SINCE]
    for col, extra in _EPISODE_COLS.items():
        if cur[col] < since:  # False for NaN (no episode open)
            for c in (col, *extra):
                row[c] = cur[c]
    for i in range(len(prog.arrived) - 1, -1, -1):
        if prog.arrived[i] >= 0 and prog.left[i] < 0:
            row[TC.CUR_STOP] = i
            row[TC.VISIT_START] = prog.arrived[i]
            if int(cur[TC.CUR_STOP]) == i and cur[TC.DWELL_OPEN] < since:
                row[TC.DWELL_OPEN] = cur[TC.DWELL_OPEN]
            break
    return row


def _device_row(cur: F64, slot: int, since: int) -> F64:
    row = DEVICE_ROW.copy()
    if cur[DC.BAT_TRIP] == slot and cur[DC.BAT_OPEN] < since:
        for col in (DC.BAT_OPEN, DC.BAT_TRIP, DC.BATTERY):
            row[col] = cur[col]
    return row


def start_state(
    trips: TripTable, devices: DeviceTable, slot: int, late_ts: int, history: History
) -> Start | None:
    """The start of a durable re-run of trip ``slot`` for data from ``late_ts`` on, with its
    stored messages; None when ``late_ts`` is beyond the lookback."""
    info, prog = trips.info[slot], trips.progress[slot]
    assert info is not None and prog is not None
    owned = [d for d in info.device_slots if devices.trip[d] == slot]
    since, until = _window(trips, devices, slot, owned, late_ts)
    if late_ts < since:
        return None
    ids = [devices.ids[d] for d in owned]
    fixes, locks = history(ids, since, until) if ids else ((), ())
    wanted = set(ids)
    fixes = [f for f in fixes if f.device_id in wanted and since <= f.ts <= until]
    locks = [e for e in locks if e.device_id in wanted and since <= e.ts <= until]
    start_prog = _progress_before(prog, since)
    return Start(
        since,
        until,
        _trip_row(trips.m[slot], start_prog, since),
        {d: _device_row(devices.m[d], slot, since) for d in owned},
        start_prog,
        FixCols.from_fixes(fixes, devices),
        LockCols.from_events(locks, devices),
    )
