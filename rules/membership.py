"""Fence membership with hysteresis (CONTRACT §3), on whole rounds of fixes at once.

A trip is inside a fence (its origin, one of its stops, or a global geofence) from its first
valid fix inside it; it is outside again only after ``FENCE_EXIT_FIXES`` consecutive valid
fixes each farther than ``fence_exit_margin_m`` beyond the fence's edge. A fix outside the
fence but within the margin, or back inside, resets the count. So a parked receiver's
drift, or a multipath burst of one fix, changes no membership: no ``left`` / ``arrived``
flapping, no dwell restart, no false unlock alarm.

Membership is per trip (all of its devices' valid fixes in event-time order), held in the
trip's state row: ``IN_ORIGIN`` / ``ORIGIN_OUT(_TS)``, ``CUR_STOP`` / ``STOP_OUT(_TS)``, and
up to ``GEOFENCE_SLOTS`` global geofences (``GF_SLOT_k``, ``GF_OUT(_TS)_k``, ``GF_SINCE_k``): a
rewind, a checkpoint and a restart carry it like any other state. An exit is dated by the
first fix of the run that confirmed it (when the truck actually left). The exit test
(``FenceSet.beyond``) runs only for fixes outside a fence their trip is inside of: a band a
margin wide around the fences in use, a small share of a batch.

Global geofences act while the trip is active: entering a ``risk_zone`` raises
RISK_ZONE_ENTRY (one per entry episode, ended on exit); entering or leaving a ``depot``,
``consignee`` or ``custom`` fence emits a GeofenceTransition (``geofence.entered`` /
``geofence.exited``). Memberships are also kept while the trip is planned, so a truck that
starts in its depot reports leaving it, not a false entry at activation.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from geofence._kernel import ragged_arange
from rules.context import Ctx
from rules.emit import episode_key
from rules.events import AlarmType
from rules.geometry import GF_NOTIFY, GF_RISK, BatchGeometry
from rules.state import GEOFENCE_SLOTS, GF_OUT, GF_OUT_TS, GF_SINCE, GF_SLOT, RC, TC

__all__ = ["FENCE_EXIT_FIXES", "apply_geofences", "in_geofence_kind", "trip_fences"]

logger = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

FENCE_EXIT_FIXES = 2
"""Consecutive valid fixes beyond the exit margin that end a membership (CONTRACT §3)."""


def _count_out(S: F64, rows: I64, far: B, ts: F64, count_col: int, ts_col: int) -> tuple[F64, F64]:
    """The run of fixes beyond the margin after this fix: its length and first ts."""
    prev_ts = S[rows, ts_col]
    count = np.where(far, S[rows, count_col] + 1.0, 0.0)
    first = np.where(far, np.where(np.isnan(prev_ts), ts[rows], prev_ts), np.nan)
    return count, first


def trip_fences(
    ctx: Ctx, S: F64, T: I64, R: F64, ts: F64, lon: F64, lat: F64, g_org: B, g_stop: I64
) -> tuple[B, I64, F64, F64]:
    """Origin membership and the stop the trip is in after this round's fixes, and when
    memberships that ended did so (NaN: none ended).

    ``S``: the rows' trip state (updated: IN_ORIGIN and the ORIGIN_OUT / STOP_OUT runs;
    CUR_STOP is left to the caller, which compares old and new). ``g_org`` / ``g_stop``: the
    fix lies inside the origin / the stop (plan index, -1 none; the current stop first when
    it holds the fix). While inside a stop the trip stays there until the exit is
    confirmed, even when a fix lands in another (overlapping) stop's fence; it then moves on
    to that stop. An exit is dated by the first fix of the run that confirmed it.
    """
    trips = ctx.trips
    fences = ctx.geometry.trip_fences
    margin = R[:, RC.FENCE_EXIT_MARGIN_M]
    base = trips.fence_base[T]
    n = T.shape[0]
    was_in = S[:, TC.IN_ORIGIN] == 1.0
    out_o, first_o = np.zeros(n), np.full(n, np.nan)
    test = np.flatnonzero(was_in & ~g_org)
    if test.size:
        far = fences.beyond(trips.tf_slot[base[test]], lon[test], lat[test], margin[test])
        out_o[test], first_o[test] = _count_out(S, test, far, ts, TC.ORIGIN_OUT, TC.ORIGIN_OUT_TS)
    in_org = g_org | (was_in & (out_o < FENCE_EXIT_FIXES))
    S[:, TC.IN_ORIGIN] = in_org
    S[:, TC.ORIGIN_OUT] = np.where(in_org, out_o, 0.0)
    S[:, TC.ORIGIN_OUT_TS] = np.where(in_org, first_o, np.nan)
    origin_exit = np.where(was_in & ~in_org, first_o, np.nan)

    cur = S[:, TC.CUR_STOP].astype(np.int64)
    out_s, first_s = np.zeros(n), np.full(n, np.nan)
    test = np.flatnonzero((cur >= 0) & (g_stop != cur))
    if test.size:
        slots = trips.tf_slot[base[test] + 1 + cur[test]]
        far = fences.beyond(slots, lon[test], lat[test], margin[test])
        out_s[test], first_s[test] = _count_out(S, test, far, ts, TC.STOP_OUT, TC.STOP_OUT_TS)
    stay = (cur >= 0) & (out_s < FENCE_EXIT_FIXES)
    S[:, TC.STOP_OUT] = np.where(stay, out_s, 0.0)
    S[:, TC.STOP_OUT_TS] = np.where(stay, first_s, np.nan)
    stop_exit = np.where((cur >= 0) & ~stay, first_s, np.nan)
    return in_org, np.where(stay, cur, g_stop), origin_exit, stop_exit


def in_geofence_kind(ctx: Ctx, S: F64, code: int) -> B:
    """Whether each row's trip is inside a global geofence of kind ``code`` (membership)."""
    gs = S[:, GF_SLOT].astype(np.int64)
    kinds = ctx.geometry.gf_kind[np.maximum(gs, 0)]
    held: B = ((gs >= 0) & (kinds == code)).any(axis=1)
    return held


def apply_geofences(
    ctx: Ctx,
    S: F64,
    T: I64,
    r: I64,
    geo: BatchGeometry,
    R: F64,
    dev: I64,
    ts: F64,
    lon: F64,
    lat: F64,
    active: B,
    arrival: I64,
) -> None:
    """Update the rows' global-geofence memberships with their fixes (batch rows ``r``) and
    emit what entering and leaving mean for active trips."""
    geometry = ctx.geometry
    gs = S[:, GF_SLOT].astype(np.int64)
    member = gs >= 0
    first = geo.gf_start[r]
    counts = geo.gf_start[r + 1] - first
    if not member.any() and not counts.any():
        return
    n = r.shape[0]
    width = int(geometry.gf_kind.shape[0])  # > every geofence slot
    owner, pos = ragged_arange(counts)
    in_slot = geo.gf_slot[first[owner] + pos]
    in_keys = owner * width + in_slot
    rows = np.arange(n)[:, None]
    dead = member & ~geometry.geofences.alive(gs)
    if dead.any():  # a geofence removed meanwhile: its memberships just end
        gs[dead], member = -1, member & ~dead
    mkeys = rows * width + gs
    inside = member & np.isin(mkeys, in_keys)
    test = member & ~inside
    out = np.where(test, S[:, GF_OUT], 0.0)
    out_ts = np.where(test, S[:, GF_OUT_TS], np.nan)
    if test.any():
        ri, ki = np.nonzero(test)
        margin = R[ri, RC.FENCE_EXIT_MARGIN_M]
        far = geometry.geofences.beyond(gs[ri, ki], lon[ri], lat[ri], margin)
        prev = out_ts[ri, ki]
        out[ri, ki] = np.where(far, out[ri, ki] + 1.0, 0.0)
        out_ts[ri, ki] = np.where(far, np.where(np.isnan(prev), ts[ri], prev), np.nan)
    leave = test & (out >= FENCE_EXIT_FIXES)
    since = S[:, GF_SINCE]
    left_r, left_k = np.nonzero(leave)
    pairs = zip(left_r.tolist(), left_k.tolist(), strict=True)
    left = [(i, int(gs[i, k]), float(since[i, k]), float(out_ts[i, k])) for i, k in pairs]
    gs[leave], out[leave], since[leave], out_ts[leave] = -1, 0.0, np.nan, np.nan

    new = ~np.isin(in_keys, mkeys[member & ~leave])
    entered: list[tuple[int, int]] = []
    if new.any():
        e_row, e_slot = owner[new], in_slot[new]
        run_start = np.flatnonzero(np.r_[True, e_row[1:] != e_row[:-1]])
        e_rank = np.arange(e_row.size) - np.repeat(run_start, np.diff(np.r_[run_start, e_row.size]))
        fr, fc = np.nonzero(gs < 0)  # free columns, row by row
        f_start = np.flatnonzero(np.r_[True, fr[1:] != fr[:-1]]) if fr.size else fr
        f_rank = np.arange(fr.size) - np.repeat(f_start, np.diff(np.r_[f_start, fr.size]))
        col_of = np.full((n, GEOFENCE_SLOTS), -1, dtype=np.int64)
        col_of[fr, f_rank] = fc
        rank = np.minimum(e_rank, GEOFENCE_SLOTS - 1)
        col = np.where(e_rank < GEOFENCE_SLOTS, col_of[e_row, rank], -1)
        if (col < 0).any():
            logger.warning(
                "a trip is inside more than %d geofences at once; %d entries ignored",
                GEOFENCE_SLOTS,
                int((col < 0).sum()),
            )
        ok = col >= 0
        e_row, e_slot, col = e_row[ok], e_slot[ok], col[ok]
        gs[e_row, col], out[e_row, col], since[e_row, col] = e_slot, 0.0, ts[e_row]
        out_ts[e_row, col] = np.nan
        entered = list(zip(e_row.tolist(), e_slot.tolist(), strict=True))
    S[:, GF_SLOT], S[:, GF_OUT], S[:, GF_SINCE], S[:, GF_OUT_TS] = gs, out, since, out_ts
    if left or entered:
        _transitions(ctx, T, dev, ts, lon, lat, active, arrival, left, entered)


def _transitions(
    ctx: Ctx,
    T: I64,
    dev: I64,
    ts: F64,
    lon: F64,
    lat: F64,
    active: B,
    arrival: I64,
    left: list[tuple[int, int, float, float]],
    entered: list[tuple[int, int]],
) -> None:
    """Events of memberships that ended and began (few: plain Python)."""
    geometry, emit, trips = ctx.geometry, ctx.emit, ctx.trips
    kind_of = geometry.gf_kind
    for i, slot, since, exit_ts in left:
        meta = geometry.geofence_meta(slot)
        info = trips.info[int(T[i])]
        if meta is None or info is None or not active[i]:
            continue
        gid, name, kind = meta
        ts_i = int(exit_ts)  # dated by the first fix of the run that confirmed the exit
        if kind_of[slot] == GF_RISK:
            key = episode_key(info.trip_id, AlarmType.RISK_ZONE_ENTRY, gid, since)
            if key in info.emitted:
                emit.ended(info, AlarmType.RISK_ZONE_ENTRY, key, ts_i, {"geofence_id": gid})
        elif kind_of[slot] == GF_NOTIFY:
            emit.geofence(
                info, "exited", ts_i, ctx.devices.ids[int(dev[i])], gid, name, kind,
                lat=float(lat[i]), lon=float(lon[i]),
            )  # fmt: skip
    for i, slot in entered:
        meta = geometry.geofence_meta(slot)
        info = trips.info[int(T[i])]
        if meta is None or info is None or not active[i]:
            continue
        gid, name, kind = meta
        ts_i, dev_id = int(ts[i]), ctx.devices.ids[int(dev[i])]
        if kind_of[slot] == GF_RISK:
            emit.alarm(
                info,
                AlarmType.RISK_ZONE_ENTRY,
                dev_id,
                ts_i,
                episode_key(info.trip_id, AlarmType.RISK_ZONE_ENTRY, gid, ts_i),
                lat=float(lat[i]),
                lon=float(lon[i]),
                details={"geofence_id": gid, "name": name, "kind": kind},
                arrival_ms=int(arrival[i]),
            )
        elif kind_of[slot] == GF_NOTIFY:
            emit.geofence(
                info, "entered", ts_i, dev_id, gid, name, kind, lat=float(lat[i]), lon=float(lon[i])
            )
