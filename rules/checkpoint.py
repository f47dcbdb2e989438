"""A trip's durable engine state as a versioned blob, and back (``Engine.export_trip_state``
/ ``import_trip_state``).

The caller stores the blob with the batch that produced it (same transaction as its
telemetry and alarms) and, after a restart, loads the trip's document with ``upsert_trip``
and then the blob, so the trip continues exactly where it was: counters, anchors, open
episodes, the jump filter, stop progress, emitted keys (nothing is raised twice), the
signal-lost episode and the wall clock it was last heard at.

Format: UTF-8 JSON (no pickle), ``{"format": FORMAT, "version": VERSION, "trip_id",
"plan", "trip", "device_columns", "devices", "progress", "emitted", "late_done",
"signal_episode", "signal_open", "heard"}``, and ``"waiting"`` when late unlocks of the
trip's lock wait for its GPS (``Engine._hold``): ``[device, ts, event, method, lat, lon,
battery_pct, seq, received_at, extra, judged_by]`` each. The trip's state row is an object
keyed by column name (``TC``); each device's (``DC``) is an array in the order that
``device_columns`` names once per blob (a checkpoint writes hundreds of trips of 16
devices: no object per device). NaN is ``null`` and infinities ``"inf"`` / ``"-inf"``.
Columns that hold slots (which differ after a restart) hold ids: ``trip.VALID_DEV`` a
device id, ``trip.GF_SLOT_k`` a geofence id (a geofence removed by the time the blob is
loaded drops out of the memberships), ``devices.*.BAT_TRIP`` a trip id. Version 2 added
the fence-membership columns, version 3 the device arrays (version 2 blobs, an object per
device, are still read).

Devices: a device's event-time state (last message, jump filter, LOW_BATTERY episode) is
per device, and a device may serve several trips over time; its row is stored with the
trip it currently reports for (``DeviceTable.trip``), so exactly one blob holds it. On
import a row replaces the device's current one unless that one has newer data (two blobs
holding one device after its owner changed between checkpoints: the newer wins). A
LOW_BATTERY episode whose trip is not loaded is dropped.

``plan`` is a digest of what the state indexes into: trip id, devices, origin and stop
fences in plan order, the route. Thresholds, ETAs and the planned start may change (a
re-planned document keeps its state as in the live engine); anything else is a mismatch.
A blob of another format version or plan raises RulesError; the caller falls back to the
document and its milestone history.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from rules.errors import RulesError
from rules.plan import FencePlan, TripPlan
from rules.state import DC, GF_SLOT, TC, DeviceTable, StopProgress, TripInfo, TripTable
from telemetry.models import LockEvent, LockEventType, UnlockMethod

__all__ = ["FORMAT", "VERSION", "dump_trip", "load_trip", "plan_digest"]

FORMAT = "cargowatch.rules.trip-state"
VERSION = 3
READABLE = (2, 3)

F64 = npt.NDArray[np.float64]


def _canon(x: Any) -> Any:
    """Numbers as floats (a stored copy may write 121 for 121.0), containers recursively."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int | float | np.number):
        return float(x)
    if isinstance(x, Mapping):
        return {str(k): _canon(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_canon(v) for v in x]
    return str(x)


def _fence(f: FencePlan) -> dict[str, Any]:
    return {"geometry": f.geometry, "radius_m": f.radius_m}


def plan_digest(plan: TripPlan, route_digest: bytes) -> str:
    """Digest of the plan structure the state refers to (see the module doc)."""
    body = {
        "trip_id": plan.trip_id,
        "devices": list(plan.devices),
        "origin": _fence(plan.origin),
        "stops": [[s.stop_id, _fence(s.fence)] for s in plan.stops],
    }
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(_canon(body), sort_keys=True, separators=(",", ":")).encode())
    h.update(route_digest)
    return h.hexdigest()


def _plan_digest_of(info: TripInfo) -> str:
    """``plan_digest`` of the trip's current plan, computed once per plan."""
    memo = info.plan_digest_memo
    if memo is not None and memo[0] is info.plan and memo[1] == info.route_digest:
        return memo[2]
    digest = plan_digest(info.plan, info.route_digest)
    info.plan_digest_memo = (info.plan, info.route_digest, digest)
    return digest


def _num(v: float) -> float | str | None:
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


_TC_NAMES = tuple(c.name for c in TC)
_DC_NAMES = tuple(c.name for c in DC)
_VALID_DEV = TC.VALID_DEV.name
_BAT_TRIP = DC.BAT_TRIP.name
_GF_SLOT_COLS = tuple(GF_SLOT.tolist())


def _nums(values: list[float]) -> list[float | str | None]:
    """``_num`` over a row (``ndarray.tolist()``: Python floats)."""
    return [
        v if -math.inf < v < math.inf else None if v != v else "inf" if v > 0 else "-inf"
        for v in values
    ]


def _has_inf(values: list[float]) -> bool:
    return math.inf in values or -math.inf in values


def _unnum(v: object) -> float:
    if v is None:
        return math.nan
    if v in ("inf", "-inf"):
        return math.inf if v == "inf" else -math.inf
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"not a number: {v!r}")
    return float(v)


def _row(
    values: object, columns: type[TC] | type[DC], id_cols: tuple[int, ...]
) -> tuple[F64, dict[int, str | None]]:
    """A state row from its JSON object, and the raw ids of its id columns (NaN there)."""
    if not isinstance(values, Mapping) or set(values) != {c.name for c in columns}:
        raise ValueError(f"the {columns.__name__} columns differ")
    row = np.full(len(columns), math.nan)
    idents: dict[int, str | None] = {}
    for c in columns:
        if c in id_cols:
            ident = values[c.name]
            if ident is not None and not isinstance(ident, str):
                raise ValueError(f"{c.name} must be an id")
            idents[int(c)] = ident
        else:
            row[c] = _unnum(values[c.name])
    return row, idents


def _no_geofence(slot: int) -> str | None:
    return None


def dump_trip(
    trips: TripTable,
    devices: DeviceTable,
    slot: int,
    geofence_id: Callable[[int], str | None] = _no_geofence,
    waiting: Sequence[tuple[LockEvent, int]] = (),
) -> bytes:
    """The blob of trip ``slot``; ``geofence_id`` names a global geofence slot (None: gone);
    ``waiting``: the trip's held lock events with the time each is judged by."""
    info, prog = trips.info[slot], trips.progress[slot]
    assert info is not None and prog is not None
    # Whole rows through tolist() and names computed once: a checkpoint dumps every changed
    # trip of a partition (hundreds, each with its devices) in one transaction. orjson writes
    # NaN as null, as ``_num`` does, so only a row holding an infinity goes through ``_nums``.
    values = trips.m[slot].tolist()
    trip = dict(zip(_TC_NAMES, _nums(values) if _has_inf(values) else values, strict=True))
    dev = values[TC.VALID_DEV]
    trip[_VALID_DEV] = None if math.isnan(dev) else devices.ids[int(dev)]
    for col in _GF_SLOT_COLS:
        fence = int(values[col])
        trip[_TC_NAMES[col]] = geofence_id(fence) if fence >= 0 else None
    ds = info.device_slots
    slots = [d for d, t in zip(ds, devices.trip[list(ds)].tolist(), strict=True) if t == slot]
    block = devices.m[slots]
    rows: list[list[Any]] = block.tolist()
    if np.isinf(block).any():
        rows = [_nums(r) for r in rows]
    names, ids = trips.names, devices.ids
    for r, bat_trip in zip(rows, block[:, DC.BAT_TRIP].tolist(), strict=True):
        r[DC.BAT_TRIP] = names[int(bat_trip)] if bat_trip >= 0 else None
    owned = {ids[d]: r for d, r in zip(slots, rows, strict=True)}
    body = {
        "format": FORMAT,
        "version": VERSION,
        "trip_id": info.trip_id,
        "plan": _plan_digest_of(info),
        "trip": trip,
        "device_columns": _DC_NAMES,
        "devices": owned,
        "progress": {"arrived": prog.arrived, "unsealed": prog.unsealed, "left": prog.left},
        "emitted": sorted(info.emitted),
        "late_done": sorted(info.late_done),
        "signal_episode": info.signal_episode,
        "signal_open": bool(trips.signal_open[slot]),
        "heard": _num(float(trips.heard[slot])),
    }
    if waiting:
        body["waiting"] = [_waiting_row(e, by) for e, by in waiting]
    return orjson.dumps(body)


def _waiting_row(e: LockEvent, by: int) -> list[Any]:
    method = None if e.method is None else e.method.value
    return [
        *(e.device_id, e.ts, e.event.value, method, e.lat, e.lon, e.battery_pct, e.seq),
        *(e.received_at, e.extra, by),
    ]


def _waiting_event(row: object, devices: Sequence[str]) -> tuple[LockEvent, int]:
    if not isinstance(row, list) or len(row) != 11:
        raise ValueError("a waiting lock event has 11 fields")
    device, ts, event, method, lat, lon, battery, seq, received, extra, by = row
    if device not in devices:
        raise ValueError(f"waiting event of device {device!r}, not one of the trip's")
    for name, value in (("ts", ts), ("received_at", received), ("judged_by", by)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"waiting event {name} must be an integer")
    for value in (lat, lon, battery):
        if value is not None and not isinstance(value, int | float):
            raise ValueError("waiting event position and battery must be numbers")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise ValueError("waiting event seq must be an integer")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError("waiting event extra must be an object")
    return (
        LockEvent(
            device,
            ts,
            LockEventType(event),
            None if method is None else UnlockMethod(method),
            None if lat is None else float(lat),
            None if lon is None else float(lon),
            None if battery is None else float(battery),
            seq,
            received,
            extra,
        ),
        by,
    )


def _ints(values: object, n: int) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != n:
        raise ValueError("stop progress does not match the plan's stops")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError("stop progress holds a non-integer")
    return tuple(values)


def _no_slot(geofence_id: str) -> int | None:
    return None


def load_trip(
    trips: TripTable,
    devices: DeviceTable,
    slot: int,
    blob: bytes,
    slots: Mapping[str, int],
    geofence_slot: Callable[[str], int | None] = _no_slot,
) -> list[tuple[LockEvent, int]]:
    """Put the blob's state into trip ``slot`` (``slots``: trip id -> slot of loaded trips;
    ``geofence_slot``: a live global geofence's slot, None when gone). Returns the trip's
    waiting lock events (``dump_trip``'s ``waiting``). RulesError, with nothing changed,
    when the blob does not fit."""
    info = trips.info[slot]
    assert info is not None
    tid = info.trip_id
    try:
        body = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise RulesError("trip state is not readable", trip_id=tid) from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise RulesError("not a trip state", trip_id=tid)
    version = body.get("version")
    if version not in READABLE:
        raise RulesError(
            "trip state of another format version",
            trip_id=tid,
            version=body.get("version"),
            expected=list(READABLE),
        )
    if body.get("trip_id") != tid:
        raise RulesError("trip state of another trip", trip_id=tid, found=body.get("trip_id"))
    if body.get("plan") != _plan_digest_of(info):
        raise RulesError("trip state of another plan", trip_id=tid)
    n = len(info.plan.stops)
    try:
        row, ids = _row(body["trip"], TC, (TC.VALID_DEV, *GF_SLOT.tolist()))
        p = body["progress"]
        prog = StopProgress(_ints(p["arrived"], n), _ints(p["unsealed"], n), _ints(p["left"], n))
        emitted, late_done = body["emitted"], body["late_done"]
        if not all(isinstance(k, str) for k in emitted):
            raise ValueError("emitted keys must be strings")
        late = set(_ints(late_done, len(late_done)))
        if not late <= set(range(n)):
            raise ValueError("late_done names a stop the plan does not have")
        episode = body["signal_episode"]
        if episode is not None and not isinstance(episode, str):
            raise ValueError("signal_episode must be a string")
        signal_open = body["signal_open"]
        if not isinstance(signal_open, bool):
            raise ValueError("signal_open must be a boolean")
        heard = _unnum(body["heard"])
        rows = {}
        columns = body["device_columns"] if version == 3 else None
        if columns is not None and not (
            isinstance(columns, list) and all(isinstance(c, str) for c in columns)
        ):
            raise ValueError("device_columns must be a list of names")
        for device_id, values in dict(body["devices"]).items():
            if device_id not in info.plan.devices:
                raise ValueError(f"device {device_id!r} is not one of the trip's")
            if columns is not None:
                if not isinstance(values, list) or len(values) != len(columns):
                    raise ValueError(f"device {device_id!r} row does not match device_columns")
                values = dict(zip(columns, values, strict=True))
            drow, dids = _row(values, DC, (DC.BAT_TRIP,))
            rows[device_id] = (drow, dids[DC.BAT_TRIP])
        waiting = [_waiting_event(r, info.plan.devices) for r in body.get("waiting") or []]
    except (KeyError, TypeError, ValueError) as e:
        raise RulesError("trip state is invalid", trip_id=tid, reason=str(e)) from None
    valid_dev = ids[TC.VALID_DEV]
    row[TC.VALID_DEV] = math.nan if valid_dev is None else devices.slot(str(valid_dev))
    for col in GF_SLOT.tolist():
        gid = ids[col]
        fence = None if gid is None else geofence_slot(gid)
        row[col] = -1.0 if fence is None else float(fence)
    trips.m[slot] = row
    trips.progress[slot] = prog
    info.emitted |= set(emitted)
    info.late_done = late
    info.signal_episode = episode
    trips.signal_open[slot] = signal_open
    trips.heard[slot] = heard
    for device_id, (drow, bat_trip) in rows.items():
        d = devices.slot(device_id)
        owner = -1 if bat_trip is None else slots.get(str(bat_trip), -1)
        drow[DC.BAT_TRIP] = owner
        if owner < 0:
            drow[DC.BAT_OPEN] = math.nan
        if not devices.m[d, DC.LAST_TS] > drow[DC.LAST_TS]:  # the newer data wins
            devices.m[d] = drow
    return waiting
