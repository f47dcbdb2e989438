"""Position rules applied to one round of fixes with array operations (CONTRACT §2, §4).

A round holds at most one fix per trip, so the state rows of its trips are gathered into a
small matrix, every rule is evaluated on whole columns, and the rows are written back in
one scatter. Only transitions (an alarm raised or ended, a fence entered or left) drop into
Python to build events. Rules covered here: validity (null island, GPS jump), LOW_BATTERY,
ROUTE_DEVIATION, LONG_STOP, SPEEDING, DWELL_OVERTIME, fence membership (rules/membership.py:
milestones, geofence events, RISK_ZONE_ENTRY).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from geofence import distance_m
from geofence.distance import metres_per_degree, wrap_lon
from rules.batch import FixCols
from rules.context import IDLE, OFF_ROUTE, ON_ROUTE, STOPPED, Ctx, Outcome
from rules.emit import episode_key
from rules.events import AlarmType, MilestoneKind
from rules.geometry import GF_REST, BatchGeometry
from rules.lifecycle import stop_change, touch_trips
from rules.membership import apply_geofences, in_geofence_kind, trip_fences
from rules.state import ACTIVE, DC, RC, TC

__all__ = ["apply_battery", "apply_fix_round"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
NAN = np.nan

JUMP_RECOVERY_FIXES = 5
"""After this many consecutive rejected fixes that agree with each other (each plausible
from the one before), the newest is accepted: the *previous valid* fix was the bad one."""
SAME_TIME_JUMP_M = 50.0
"""Two fixes of one device with the same ts farther apart than this: the second is a jump."""
STOPPED_STATE_MS = 120_000
"""The live feed calls a truck ``stopped`` after this long stationary."""


def local_distance(kx: F64, ky: F64, lon1: F64, lat1: F64, lon2: F64, lat2: F64) -> F64:
    """Metres between points with the ellipsoid's local scale ``kx``, ``ky`` (metres per
    degree at the fix's latitude, computed once per round): within 0.1 % of the geodesic up
    to tens of km, which is all the jump filter and the stop radius need."""
    dx = wrap_lon(lon2 - lon1) * kx
    dy = (lat2 - lat1) * ky
    return np.sqrt(dx * dx + dy * dy)


def rule_rows(ctx: Ctx, t: I64) -> F64:
    """Thresholds per row: the trip's, or the engine defaults for rows with no trip."""
    if t.size and t.min() >= 0:
        return ctx.trips.rules[t]
    out = ctx.trips.rules[np.maximum(t, 0)]
    out[t < 0] = ctx.default_rules
    return out


def apply_battery(
    ctx: Ctx,
    D: F64,
    d: I64,
    t: I64,
    RR: F64,
    ts: I64,
    battery: F64,
    lon: F64,
    lat: F64,
    arrival: I64,
    active: B,
    low_event: B | None = None,
) -> None:
    """LOW_BATTERY: one episode per device (on an active trip) from a report <= the low
    threshold or a ``low_battery`` event, until a report above the clear threshold.

    ``D`` holds the rows' device state (one row per device; the caller writes it back)."""
    seen = ~np.isnan(battery)
    low_ev = np.zeros(d.shape[0], bool) if low_event is None else low_event
    if not (seen.any() or low_ev.any()):
        return
    trips = ctx.trips
    D[:, DC.BATTERY] = np.where(seen, battery, D[:, DC.BATTERY])
    is_open = ~np.isnan(D[:, DC.BAT_OPEN])
    low = (seen & (battery <= RR[:, RC.LOW_BATTERY_PCT])) | low_ev
    clear = seen & is_open & (battery > RR[:, RC.LOW_BATTERY_CLEAR_PCT])
    raise_ = low & ~is_open & active
    if not (clear.any() or raise_.any()):
        return
    for i in np.flatnonzero(clear).tolist():
        dev, slot = int(d[i]), int(D[i, DC.BAT_TRIP])
        info = trips.info[slot] if slot >= 0 else None
        if info is not None:
            key = episode_key(
                info.trip_id, AlarmType.LOW_BATTERY, ctx.devices.ids[dev], D[i, DC.BAT_OPEN]
            )
            ctx.emit.ended(
                info, AlarmType.LOW_BATTERY, key, int(ts[i]), {"battery_pct": float(battery[i])}
            )
        D[i, DC.BAT_OPEN] = NAN
        D[i, DC.BAT_TRIP] = -1
    for i in np.flatnonzero(raise_).tolist():
        dev, slot = int(d[i]), int(t[i])
        info = trips.info[slot]
        assert info is not None
        D[i, DC.BAT_OPEN] = ts[i]
        D[i, DC.BAT_TRIP] = slot
        pct = None if np.isnan(battery[i]) else float(battery[i])
        ctx.emit.alarm(
            info,
            AlarmType.LOW_BATTERY,
            ctx.devices.ids[dev],
            int(ts[i]),
            episode_key(info.trip_id, AlarmType.LOW_BATTERY, ctx.devices.ids[dev], int(ts[i])),
            lat=None if np.isnan(lat[i]) else float(lat[i]),
            lon=None if np.isnan(lon[i]) else float(lon[i]),
            details={
                "battery_pct": pct,
                "low_battery_pct": float(RR[i, RC.LOW_BATTERY_PCT]),
                "source": "event" if pct is None else "report",
            },
            arrival_ms=int(arrival[i]),
        )


def _jump_filter(D: F64, RR: F64, ts: I64, lon: F64, lat: F64, ok: B, kx: F64, ky: F64) -> B:
    """True where a fix implies more than ``max_jump_kmh`` from the device's previous valid
    fix (CONTRACT §2), with recovery after JUMP_RECOVERY_FIXES consistent rejections.
    Updates the jump-run columns of ``D`` (the rows' device state)."""
    prev_ts = D[:, DC.VALID_TS]
    has_prev = ok & ~np.isnan(prev_ts)
    if not has_prev.any():
        return np.zeros(ts.shape[0], bool)
    max_kmh = RR[:, RC.MAX_JUMP_KMH]
    dist = local_distance(kx, ky, D[:, DC.VALID_LON], D[:, DC.VALID_LAT], lon, lat)
    dt_s = np.abs(ts - prev_ts) * 0.001
    with np.errstate(divide="ignore", invalid="ignore"):
        kmh = dist / dt_s * 3.6
    jump = has_prev & np.where(dt_s > 0, kmh > max_kmh, dist > SAME_TIME_JUMP_M)
    for i in np.flatnonzero(jump).tolist():
        row = D[i]
        run = 1.0
        if not np.isnan(row[DC.JUMP_TS]):
            step = float(distance_m(row[DC.JUMP_LON], row[DC.JUMP_LAT], lon[i], lat[i]))
            dt = abs(float(ts[i]) - row[DC.JUMP_TS]) / 1000.0
            plausible = step / dt * 3.6 <= max_kmh[i] if dt > 0 else step <= SAME_TIME_JUMP_M
            run = row[DC.JUMP_RUN] + 1.0 if plausible else 1.0
        if run >= JUMP_RECOVERY_FIXES:
            jump[i] = False  # accepted as valid; the run is reset with the valid fixes
        else:
            row[DC.JUMP_RUN] = run
            row[DC.JUMP_TS], row[DC.JUMP_LON], row[DC.JUMP_LAT] = ts[i], lon[i], lat[i]
    return jump


def apply_fix_round(
    ctx: Ctx, f: FixCols, ftrip: I64, geo: BatchGeometry, rows: I64, out: Outcome
) -> None:
    """Apply the fixes ``rows`` (at most one per trip and device) to the state."""
    dm, trips = ctx.devices.m, ctx.trips
    d, t, ts, seq = f.dev[rows], ftrip[rows], f.ts[rows], f.seq[rows]
    D = dm[d]  # the rows' device state, a copy written back below
    last_ts, last_seq = D[:, DC.LAST_TS], D[:, DC.LAST_SEQ]
    dup = (ts == last_ts) & ((seq == last_seq) | (np.isnan(seq) & np.isnan(last_seq)))
    if dup.any():
        out.dup[rows[dup]] = True
        keep = ~dup
        rows, d, t, ts, seq, D = rows[keep], d[keep], t[keep], ts[keep], seq[keep], D[keep]
        if rows.size == 0:
            return
    newer = ~(ts < D[:, DC.LAST_TS])
    D[:, DC.LAST_SEQ] = np.where(newer, seq, D[:, DC.LAST_SEQ])
    D[:, DC.LAST_TS] = np.where(newer, ts, D[:, DC.LAST_TS])
    recv = f.recv[rows]
    arrival = np.where(recv > 0, recv, ctx.now_ms)
    lon, lat, speed, battery = f.lon[rows], f.lat[rows], f.speed[rows], f.battery[rows]
    all_trip = bool(t.min() >= 0)
    has_trip = t >= 0
    if all_trip:
        touch_trips(ctx, t, ts, arrival)
    elif has_trip.any():
        sel = np.flatnonzero(has_trip)
        touch_trips(ctx, t[sel], ts[sel], arrival[sel])
    RR = rule_rows(ctx, t)
    status = (
        trips.m[t, TC.STATUS]
        if all_trip
        else np.where(has_trip, trips.m[np.maximum(t, 0), TC.STATUS], -1.0)
    )
    apply_battery(ctx, D, d, t, RR, ts, battery, lon, lat, arrival, status == ACTIVE)

    # Validity for rules (CONTRACT §2).
    ok = np.isfinite(lon) & np.isfinite(lat) & ~((lon == 0.0) & (lat == 0.0))
    with np.errstate(invalid="ignore"):
        kx, ky = metres_per_degree(lat)
    jump = _jump_filter(D, RR, ts, lon, lat, ok, kx, ky)
    valid = ok & ~jump
    all_valid = bool(valid.all())
    if not all_valid:
        ids = ctx.devices.ids
        for i in np.flatnonzero(~valid).tolist():
            fix_key = (ids[d[i]], int(ts[i]), None if np.isnan(seq[i]) else int(seq[i]))
            ctx.flagged.append((fix_key, "gps_jump" if ok[i] else "null_island"))
    for col, values in ((DC.VALID_TS, ts), (DC.VALID_LON, lon), (DC.VALID_LAT, lat)):
        D[:, col] = np.where(valid, values, D[:, col])
    D[:, DC.JUMP_RUN] = np.where(valid, 0.0, D[:, DC.JUMP_RUN])
    D[:, DC.JUMP_TS] = np.where(valid, NAN, D[:, DC.JUMP_TS])
    dm[d] = D
    out.valid[rows] = valid

    if all_valid and all_trip:  # the common case: no subsetting
        r, T, vd, vts = rows, t, d, ts.astype(np.float64)
        vlon, vlat, vspd, arrival_v, R = lon, lat, speed, arrival, RR
        vkx, vky = kx, ky
    else:
        idx = np.flatnonzero(valid & has_trip)
        if idx.size == 0:
            return
        r, T, vd, vts = rows[idx], t[idx], d[idx], ts[idx].astype(np.float64)
        vlon, vlat, vspd, arrival_v, R = lon[idx], lat[idx], speed[idx], arrival[idx], RR[idx]
        vkx, vky = kx[idx], ky[idx]
    g_dist, g_seg, g_org, g_stop = geo.dist[r], geo.seg[r], geo.in_origin[r], geo.stop[r]
    S = trips.m[T]  # a copy: rules work on it column by column, then it is written back
    active = S[:, TC.STATUS] == ACTIVE

    S[:, TC.VALID_TS], S[:, TC.VALID_LON], S[:, TC.VALID_LAT] = vts, vlon, vlat
    S[:, TC.VALID_DEV], S[:, TC.VALID_SPEED] = vd, vspd
    S[:, TC.HINT] = np.where(g_seg >= 0, g_seg, S[:, TC.HINT])
    S[:, TC.DIST] = g_dist

    # Fence membership with hysteresis (rules/membership.py): origin, stops, geofences.
    in_org, new_stop, origin_exit, stop_exit = trip_fences(
        ctx, S, T, R, vts, vlon, vlat, g_org, g_stop
    )
    apply_geofences(ctx, S, T, r, geo, R, vd, vts, vlon, vlat, active, arrival_v)

    # Origin: departed = the origin membership of the active trip ended after it was in it.
    S[:, TC.SEEN_ORIGIN] = np.maximum(S[:, TC.SEEN_ORIGIN], in_org)
    departed = active & ~in_org & (S[:, TC.SEEN_ORIGIN] == 1.0) & (S[:, TC.DEPARTED] == 0.0)
    S[departed, TC.DEPARTED] = 1.0

    # Stop visits and DWELL_OVERTIME ("longer than" max_dwell_min: strictly greater).
    old_stop = S[:, TC.CUR_STOP].copy()
    old_dwell = S[:, TC.DWELL_OPEN].copy()
    changed = new_stop != old_stop
    in_stop = new_stop >= 0
    S[:, TC.CUR_STOP] = new_stop
    S[:, TC.VISIT_START] = np.where(changed, vts, S[:, TC.VISIT_START])
    S[:, TC.DWELL_OPEN] = np.where(changed, NAN, S[:, TC.DWELL_OPEN])
    dwell_ms = (
        trips.st_dwell_ms[trips.stop_base[T] + np.maximum(new_stop, 0)]
        if in_stop.any()
        else np.zeros(new_stop.shape[0])
    )
    dwell_raise = (
        active & in_stop & np.isnan(S[:, TC.DWELL_OPEN]) & (vts - S[:, TC.VISIT_START] > dwell_ms)
    )
    S[dwell_raise, TC.DWELL_OPEN] = S[dwell_raise, TC.VISIT_START]

    # ROUTE_DEVIATION: > corridor for >= N consecutive fixes and >= off_route_min_s; ends
    # after back_on_route_fixes consecutive fixes within it. Fixes inside the trip's own
    # origin or stop fences never count as off route (a stop off the line is planned); nor
    # does a fix of a trip still inside one by membership (drift at a stop off the line).
    exempt = g_org | (g_stop >= 0) | in_org | in_stop
    off_now = (g_dist > R[:, RC.CORRIDOR_M]) & ~exempt
    off = off_now & active
    cnt, since, dmax = S[:, TC.OFF_COUNT], S[:, TC.OFF_SINCE], S[:, TC.OFF_MAX]
    r_open, back = S[:, TC.OFF_OPEN], S[:, TC.BACK_COUNT]
    is_open = ~np.isnan(r_open)
    first = off & (cnt == 0)
    cnt2 = np.where(off, cnt + 1.0, cnt)
    since2 = np.where(first, vts, since)
    dmax2 = np.where(off, np.where(first, g_dist, np.fmax(dmax, g_dist)), dmax)
    back2 = np.where(off, 0.0, np.where(is_open, back + 1.0, 0.0))
    r_end = ~off & is_open & (back2 >= R[:, RC.BACK_ON_ROUTE_FIXES])
    reset = ~off & (~is_open | r_end)
    r_raise = (
        off
        & ~is_open
        & (cnt2 >= R[:, RC.OFF_ROUTE_MIN_FIXES])
        & (vts - since2 >= R[:, RC.OFF_ROUTE_MIN_S] * 1000.0)
    )
    r_ended_since, r_ended_max, r_ended_cnt = r_open.copy(), dmax.copy(), cnt.copy()
    S[:, TC.OFF_COUNT] = np.where(reset, 0.0, cnt2)
    S[:, TC.OFF_SINCE] = np.where(reset, NAN, since2)
    S[:, TC.OFF_MAX] = np.where(reset, NAN, dmax2)
    S[:, TC.BACK_COUNT] = np.where(reset, 0.0, back2)
    S[:, TC.OFF_OPEN] = np.where(r_raise, since2, np.where(r_end, NAN, r_open))
    S[:, TC.OFF_NOW] = off_now

    # LONG_STOP: every fix within stop_radius_m of the first fix of the stop (the anchor)
    # and not faster than stop_speed_kmh when reported, for >= stop_max_min. A fix that
    # breaks this ends the episode and anchors a new candidate (if it is slow itself).
    a_ts, a_lon, a_lat = S[:, TC.ANCHOR_TS], S[:, TC.ANCHOR_LON], S[:, TC.ANCHOR_LAT]
    slow = np.isnan(vspd) | (vspd <= R[:, RC.STOP_SPEED_KMH])
    near = local_distance(vkx, vky, a_lon, a_lat, vlon, vlat) <= R[:, RC.STOP_RADIUS_M]
    cont = active & ~np.isnan(a_ts) & near & slow
    s_open = S[:, TC.STOP_OPEN]
    s_end = ~cont & ~np.isnan(s_open)
    a_ts2 = np.where(cont, a_ts, np.where(slow & active, vts, NAN))
    a_lon2 = np.where(cont, a_lon, vlon)
    a_lat2 = np.where(cont, a_lat, vlat)
    duration = vts - a_ts2
    s_raise = cont & np.isnan(s_open) & (duration >= R[:, RC.STOP_MAX_MIN] * 60_000.0)
    if s_raise.any():
        cand = np.flatnonzero(s_raise)
        s_raise[cand[exempt[cand]]] = False
        cand = np.flatnonzero(s_raise)
        if cand.size:
            shippers = [trips.info[s].shipper for s in T[cand].tolist()]
            rest = in_geofence_kind(ctx, S[cand], GF_REST)
            rest |= ctx.geometry.in_rest_area(vlon[cand], vlat[cand], shippers)
            rest |= ctx.geometry.in_rest_area(a_lon2[cand], a_lat2[cand], shippers)
            s_raise[cand[rest]] = False
    s_ended = s_open.copy()
    S[:, TC.ANCHOR_TS], S[:, TC.ANCHOR_LON], S[:, TC.ANCHOR_LAT] = a_ts2, a_lon2, a_lat2
    S[:, TC.STOP_OPEN] = np.where(s_raise, a_ts2, np.where(s_end, NAN, s_open))

    # SPEEDING: reported speed > speed_limit_kmh on every fix for >= speeding_min_s; a fix
    # at or under the limit ends it; fixes without a speed neither extend nor break it.
    has_speed = active & ~np.isnan(vspd)
    over = has_speed & (vspd > R[:, RC.SPEED_LIMIT_KMH])
    under = has_speed & ~over
    sp_since, sp_max, sp_open = S[:, TC.SPEED_SINCE], S[:, TC.SPEED_MAX], S[:, TC.SPEED_OPEN]
    sp_first = over & np.isnan(sp_since)
    sp_since2 = np.where(sp_first, vts, np.where(under, NAN, sp_since))
    sp_max2 = np.where(
        over, np.where(sp_first, vspd, np.fmax(sp_max, vspd)), np.where(under, NAN, sp_max)
    )
    sp_end = under & ~np.isnan(sp_open)
    sp_raise = over & np.isnan(sp_open) & (vts - sp_since2 >= R[:, RC.SPEEDING_MIN_S] * 1000.0)
    sp_ended, sp_ended_max = sp_open.copy(), sp_max.copy()
    S[:, TC.SPEED_SINCE], S[:, TC.SPEED_MAX] = sp_since2, sp_max2
    S[:, TC.SPEED_OPEN] = np.where(sp_raise, sp_since2, np.where(sp_end, NAN, sp_open))

    trips.m[T] = S

    # Position state for the live feed.
    state = np.where(
        ~active,
        IDLE,
        np.where(
            off_now, OFF_ROUTE, np.where(cont & (duration >= STOPPED_STATE_MS), STOPPED, ON_ROUTE)
        ),
    )
    out.state[r] = state
    out.dist[r] = g_dist

    # Transitions -> events (rare; plain Python).
    emit, ids = ctx.emit, ctx.devices.ids
    for i in np.flatnonzero(
        departed | changed | dwell_raise | r_raise | r_end | s_raise | s_end | sp_raise | sp_end
    ).tolist():
        slot = int(T[i])
        info = trips.info[slot]
        assert info is not None
        tid, ts_i, dev_id = info.trip_id, int(vts[i]), ids[vd[i]]
        lon_i, lat_i, arr_i = float(vlon[i]), float(vlat[i]), int(arrival_v[i])
        if r_end[i]:
            key = episode_key(tid, AlarmType.ROUTE_DEVIATION, r_ended_since[i])
            emit.ended(
                info,
                AlarmType.ROUTE_DEVIATION,
                key,
                ts_i,
                {
                    "distance_m": round(float(g_dist[i]), 1),
                    "max_distance_m": round(float(r_ended_max[i]), 1),
                    "fixes": int(r_ended_cnt[i]),
                },
            )
        if s_end[i]:
            key = episode_key(tid, AlarmType.LONG_STOP, s_ended[i])
            emit.ended(
                info,
                AlarmType.LONG_STOP,
                key,
                ts_i,
                {
                    "duration_min": round((ts_i - s_ended[i]) / 60_000.0, 2),
                },
            )
        if sp_end[i]:
            key = episode_key(tid, AlarmType.SPEEDING, sp_ended[i])
            emit.ended(
                info,
                AlarmType.SPEEDING,
                key,
                ts_i,
                {
                    "max_speed_kmh": float(sp_ended_max[i]),
                    "speed_kmh": float(vspd[i]),
                },
            )
        if departed[i]:
            left_ts = ts_i if np.isnan(origin_exit[i]) else int(origin_exit[i])
            emit.milestone(
                info, MilestoneKind.DEPARTED, left_ts, device_id=dev_id, lat=lat_i, lon=lon_i
            )
        if changed[i]:
            stop_change(
                ctx,
                slot,
                int(old_stop[i]),
                int(new_stop[i]),
                ts_i,
                device_id=dev_id,
                lon=lon_i,
                lat=lat_i,
                old_dwell_open=float(old_dwell[i]),
                left_ts=None if np.isnan(stop_exit[i]) else int(stop_exit[i]),
            )
        if dwell_raise[i]:
            stop = info.plan.stops[int(new_stop[i])]
            start = float(S[i, TC.VISIT_START])
            emit.alarm(
                info,
                AlarmType.DWELL_OVERTIME,
                dev_id,
                ts_i,
                episode_key(tid, AlarmType.DWELL_OVERTIME, stop.stop_id, start),
                details={
                    "stop_id": stop.stop_id,
                    "entered_at": int(start),
                    "dwell_min": round((ts_i - start) / 60_000.0, 2),
                    "max_dwell_min": float(dwell_ms[i]) / 60_000.0,
                },
                arrival_ms=arr_i,
                lat=lat_i,
                lon=lon_i,
            )
        if r_raise[i]:
            emit.alarm(
                info,
                AlarmType.ROUTE_DEVIATION,
                dev_id,
                ts_i,
                episode_key(tid, AlarmType.ROUTE_DEVIATION, since2[i]),
                details={
                    "distance_m": round(float(g_dist[i]), 1),
                    "max_distance_m": round(float(dmax2[i]), 1),
                    "corridor_m": float(R[i, RC.CORRIDOR_M]),
                    "off_route_since": int(since2[i]),
                    "duration_s": round((ts_i - since2[i]) / 1000.0, 1),
                    "fixes": int(cnt2[i]),
                },
                arrival_ms=arr_i,
                lat=lat_i,
                lon=lon_i,
            )
        if s_raise[i]:
            emit.alarm(
                info,
                AlarmType.LONG_STOP,
                dev_id,
                ts_i,
                episode_key(tid, AlarmType.LONG_STOP, a_ts2[i]),
                details={
                    "duration_min": round(float(duration[i]) / 60_000.0, 2),
                    "stopped_since": int(a_ts2[i]),
                    "anchor_lat": float(a_lat2[i]),
                    "anchor_lon": float(a_lon2[i]),
                    "radius_m": float(R[i, RC.STOP_RADIUS_M]),
                    "stop_max_min": float(R[i, RC.STOP_MAX_MIN]),
                },
                arrival_ms=arr_i,
                lat=lat_i,
                lon=lon_i,
            )
        if sp_raise[i]:
            emit.alarm(
                info,
                AlarmType.SPEEDING,
                dev_id,
                ts_i,
                episode_key(tid, AlarmType.SPEEDING, sp_since2[i]),
                details={
                    "speed_kmh": float(vspd[i]),
                    "max_speed_kmh": float(sp_max2[i]),
                    "speed_limit_kmh": float(R[i, RC.SPEED_LIMIT_KMH]),
                    "over_since": int(sp_since2[i]),
                    "duration_s": round((ts_i - sp_since2[i]) / 1000.0, 1),
                },
                arrival_ms=arr_i,
                lat=lat_i,
                lon=lon_i,
            )
