"""The rule engine: trips and geofences in, device messages in, engine events out.

Pure (no I/O, no clock, no asyncio): the same calls give the same events live, after a
restart and in replay. ``process`` applies one ingest batch, ``tick`` the wall-clock rules.
State lives in numpy tables (rules/state.py); a batch is applied in rounds with array
operations (rules/fixrules.py); late data rewinds the affected trips (rules/rewind.py).

About 700 lines on purpose: this is the engine's whole public face (configuration, trips,
messages, ticks, checkpoints, queries) over slot bookkeeping that must stay consistent in one
place; every rule lives in its own module (fixrules, lockrules, timers, membership, lifecycle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.backfill import History
from rules.batch import FixCols, LockCols, duplicate_mask
from rules.checkpoint import dump_trip, load_trip
from rules.context import STATE_NAMES, Ctx, FlagKey
from rules.emit import Emitter
from rules.errors import RulesError, TripPlanError
from rules.events import EngineEvent, PositionUpdate, TripStatus, TripStatusChanged
from rules.geometry import TripGeometry
from rules.lifecycle import (
    end_signal_lost,
    finish,
    open_episodes,
    reconcile_progress,
    restore_history,
    update_late_deadline,
)
from rules.plan import TripPlan, parse_trip
from rules.rewind import CROSS_DEVICE_SKEW_MS, Journal, rewind_trips, state_free
from rules.runner import run
from rules.state import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DC,
    LOCK_NAMES,
    PLANNED,
    RC,
    STATUS_CODE,
    STATUS_NAME,
    TC,
    TRIP_ROW,
    DeviceTable,
    StopProgress,
    TripInfo,
    TripTable,
)
from rules.thresholds import RULE_NAMES, merge_rules, validate_rules
from rules.timers import next_timer_ms, run_timers
from telemetry.models import Fix, LockEvent, LockEventType

__all__ = ["Engine", "EngineResult", "PositionBatch"]

logger = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_NO_ROUTE = np.zeros((0, 2))
_ENDED = (TripStatus.COMPLETED, TripStatus.CANCELLED)


def _doc_ms(value: object) -> float | None:
    """Epoch ms of a stored time (int ms or RFC 3339, as trip documents keep them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value == value else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment.timestamp() * 1000.0 if moment.tzinfo is not None else None
    return None


@dataclass(frozen=True, slots=True, eq=False)
class PositionBatch:
    """Latest valid position per device of a batch, as columns (cheap to build for 10k
    devices; ``updates()`` makes the ``PositionUpdate`` values)."""

    device_ids: npt.NDArray[np.object_]  # str
    trip_ids: npt.NDArray[np.object_]  # str or None (device on no trip)
    shippers: npt.NDArray[np.object_]
    ts: I64
    lat: F64
    lon: F64
    speed_kmh: F64
    state: npt.NDArray[np.int8]
    distance_to_route_m: F64

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls) -> PositionBatch:
        f, o = np.zeros(0), np.zeros(0, dtype=object)
        return cls(o, o, o, np.zeros(0, np.int64), f, f, f, np.zeros(0, np.int8), f)

    def updates(self) -> list[PositionUpdate]:
        """One PositionUpdate per device."""
        speed = [None if math.isnan(v) else v for v in self.speed_kmh.tolist()]
        dist = [
            None if math.isnan(v) else v for v in np.round(self.distance_to_route_m, 1).tolist()
        ]
        states = np.asarray(STATE_NAMES, dtype=object)[self.state].tolist()
        return [
            PositionUpdate(dev, trip, shipper, ts, lat, lon, sp, st, di)
            for dev, trip, shipper, ts, lat, lon, sp, st, di in zip(
                self.device_ids.tolist(),
                self.trip_ids.tolist(),
                self.shippers.tolist(),
                self.ts.tolist(),
                self.lat.tolist(),
                self.lon.tolist(),
                speed,
                states,
                dist,
                strict=True,
            )
        ]


@dataclass(slots=True)
class EngineResult:
    """What one ingest batch produced.

    ``flagged``: ``(device_id, ts, seq)`` keys of fixes not valid for rules, with the flag
    (``null_island`` or ``gps_jump``), for ``Store.flag_fixes``. ``positions``: the
    columnar form of the batch's PositionUpdates (also in ``events`` unless the engine was
    built with ``position_events=False``).
    """

    events: list[EngineEvent]
    flagged: list[tuple[FlagKey, str]] = field(default_factory=list)
    positions: PositionBatch = field(default_factory=PositionBatch.empty)


def _doc_digest(doc: Mapping[str, Any]) -> bytes:
    """A digest of a trip document without its status (to skip re-planning identical docs);
    the route's coordinates are hashed as an array (json of 3,000 vertices is slow)."""
    body = {k: v for k, v in doc.items() if k not in ("status", "route")}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(body, sort_keys=True, default=str, separators=(",", ":")).encode())
    route = doc.get("route")
    if isinstance(route, Mapping):
        try:
            h.update(np.asarray(route.get("coordinates"), dtype=np.float64).tobytes())
            h.update(str(route.get("type")).encode())
            return h.digest()
        except (TypeError, ValueError):
            pass
    # Not a GeoJSON object (parse_trip refuses it next) or coordinates that are not numbers.
    h.update(json.dumps(route, sort_keys=True, default=str).encode())
    return h.digest()


class Engine:
    """The vectorised rule engine of CONTRACT §3-§4."""

    def __init__(
        self,
        *,
        defaults: Mapping[str, float] | None = None,
        position_events: bool = True,
        journal: Journal | None = None,
        history: History | None = None,
    ) -> None:
        """``defaults`` override the engine defaults (``DEFAULT_RULES``);
        ``position_events=False`` leaves PositionUpdates out of ``EngineResult.events``
        (they stay in ``EngineResult.positions``); ``journal`` sets the rewind window;
        ``history(device_ids, since_ms, until_ms) -> (fixes, lock_events)`` reads stored
        messages, so late data older than the journal re-runs its trip from stored history
        (rules/backfill.py) instead of being applied on the current state."""
        self._defaults = merge_rules(validate_rules(defaults, "defaults"))
        self._default_row = np.array([self._defaults[n] for n in RULE_NAMES])
        self._position_events = position_events
        self.trips = TripTable()
        self.devices = DeviceTable()
        self.geometry = TripGeometry()
        self.journal = journal if journal is not None else Journal()
        self._slots: dict[str, int] = {}
        self._shipper_rules: dict[str, dict[str, float]] = {}
        self._device_trips: dict[int, set[int]] = {}
        self._gen = 0
        self._history = history
        self._removed: set[str] = set()  # trip ids dropped since the last take_dirty
        # Late unlocks waiting for their truck's GPS (``_hold``): lock device slot -> its
        # held events with the wall time each is judged by at the latest.
        self._waiting: dict[int, list[tuple[LockEvent, int]]] = {}

    # -- configuration ----------------------------------------------------------------------
    def put_shipper_rules(self, shipper: str, rules: Mapping[str, float]) -> None:
        """Set a shipper's default thresholds (RuleValueError for unknown names or values);
        live trips of the shipper pick them up at once."""
        self._shipper_rules[shipper] = validate_rules(rules, f"shipper {shipper} rules")
        for slot in self.trips.live_slots().tolist():
            info = self.trips.info[slot]
            if info is not None and info.shipper == shipper:
                self._apply_rules(slot, info.plan)
                self.trips.dirty[slot] = True

    def put_geofence(self, fence: dict[str, Any]) -> None:
        """Insert or replace a global geofence (kind ``rest_area`` suppresses LONG_STOP)."""
        self.geometry.put_geofence(fence)

    def remove_geofence(self, geofence_id: str) -> None:
        """Forget a global geofence."""
        self.geometry.remove_geofence(geofence_id)

    def _effective(self, plan: TripPlan) -> tuple[dict[str, float], list[float]]:
        top = {} if plan.corridor_m is None else {"corridor_m": plan.corridor_m}
        rules = merge_rules(self._defaults, self._shipper_rules.get(plan.shipper), top, plan.rules)
        dwell = []
        for stop in plan.stops:
            if "max_dwell_min" in plan.rules or stop.max_dwell_min is None:
                dwell.append(rules["max_dwell_min"])
            else:
                dwell.append(stop.max_dwell_min)
        return rules, dwell

    def _apply_rules(self, slot: int, plan: TripPlan) -> None:
        rules, dwell = self._effective(plan)
        self.trips.rules[slot] = [rules[n] for n in RULE_NAMES]
        base, n = int(self.trips.stop_base[slot]), int(self.trips.n_stops[slot])
        if n == len(dwell):
            self.trips.st_dwell_ms[base : base + n] = np.asarray(dwell) * 60_000.0
        update_late_deadline(self.trips, slot)

    # -- trips ------------------------------------------------------------------------------
    def upsert_trip(
        self, doc: dict[str, Any], history: Sequence[dict[str, Any]] = ()
    ) -> list[EngineEvent]:
        """Load or update a trip document (with ``status``). ``history``: milestone and
        status events emitted before (``{"kind", "ts", "stop_id"?, "status"?}``) so visited
        stops, sealing and departure survive a restart. A completed or cancelled trip is
        dropped from the live state. TripPlanError for an invalid document."""
        if not isinstance(doc, Mapping):
            raise TripPlanError("a trip document must be a JSON object")
        status = doc.get("status", "planned")
        if status not in STATUS_CODE:
            raise TripPlanError(f"status must be one of {', '.join(STATUS_CODE)}, got {status!r}")
        trip_id = doc.get("trip_id")
        if status in ("completed", "cancelled"):
            slot = self._slots.get(trip_id) if isinstance(trip_id, str) else None
            if slot is not None:
                self._remove(slot, _doc_ms(doc.get(f"{status}_at")))
            return []
        digest = _doc_digest(doc)
        slot = self._slots.get(trip_id) if isinstance(trip_id, str) else None
        info = self.trips.info[slot] if slot is not None else None
        if slot is not None and info is not None and info.doc_digest == digest:
            # The same plan again (e.g. the store's copy with a new status): state is kept;
            # only planned -> active is taken over (never backwards).
            self._take_status(slot, STATUS_CODE[status])
            return []
        plan = parse_trip(doc)
        if slot is None:
            slot = self._create(plan, STATUS_CODE[status], history)
        else:
            self._reconfigure(slot, plan, STATUS_CODE[status])
        info = self.trips.info[slot]
        assert info is not None
        info.doc_digest = digest
        return []

    def _take_status(self, slot: int, status: int) -> None:
        m = self.trips.m[slot]
        info = self.trips.info[slot]
        assert info is not None
        if status == ACTIVE and m[TC.STATUS] == PLANNED:
            self.trips.dirty[slot] = True
            m[TC.STATUS] = ACTIVE
            m[TC.ACTIVE_SINCE] = self.trips.planned_start[slot]
            info.emitted.add("status:active")
            update_late_deadline(self.trips, slot)
            self._remap(info.device_slots)

    @staticmethod
    def _slim(plan: TripPlan) -> tuple[TripPlan, bytes]:
        """The plan without its route (the geometry kernel holds the line; 10,000 routes of
        2,000 vertices would otherwise be kept twice) and a digest of the route."""
        digest = hashlib.blake2b(np.ascontiguousarray(plan.route).tobytes(), digest_size=16)
        return replace(plan, route=_NO_ROUTE), digest.digest()

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _stop_arrays(
        self, plan: TripPlan, fence_slots: I64, fence_stops: I64, boxes: F64
    ) -> tuple[I64, I64, F64, npt.NDArray[np.bool_], F64, F64]:
        n = len(plan.stops)
        unlock = np.fromiter((s.unlock_allowed for s in plan.stops), bool, n)
        eta = np.fromiter(
            (np.inf if s.eta_ms is None else float(s.eta_ms) for s in plan.stops), float, n
        )
        return fence_slots, fence_stops, boxes, unlock, np.zeros(n), eta

    def _create(self, plan: TripPlan, status: int, history: Sequence[dict[str, Any]]) -> int:
        trips = self.trips
        route_slot, fslots, fstops, boxes = self.geometry.add_trip(plan)
        slot = trips.allocate()
        devices = tuple(self.devices.slot(d) for d in plan.devices)
        plan, digest = self._slim(plan)
        info = TripInfo(slot=slot, gen=self._next_gen(), plan=plan, device_slots=devices)
        info.route_digest = digest
        trips.info[slot] = info
        trips.names[slot], trips.shippers[slot] = plan.trip_id, plan.shipper
        trips.gen[slot] = info.gen
        trips.m[slot] = TRIP_ROW
        trips.m[slot, TC.STATUS] = PLANNED
        trips.route_slot[slot] = route_slot
        trips.planned_start[slot] = plan.planned_start_ms
        trips.set_stops(slot, *self._stop_arrays(plan, fslots, fstops, boxes))
        trips.progress[slot] = StopProgress.empty(len(plan.stops))
        self._apply_rules(slot, plan)
        if status == ACTIVE:
            trips.m[slot, TC.STATUS] = ACTIVE
            trips.m[slot, TC.ACTIVE_SINCE] = plan.planned_start_ms
        self._slots[plan.trip_id] = slot
        trips.dirty[slot] = True
        restore_history(trips, slot, history)
        info.created = self.journal.snapshot_now(trips, self.devices, slot)
        for d in devices:
            self._device_trips.setdefault(d, set()).add(slot)
        self._remap(devices)
        return slot

    def _reconfigure(self, slot: int, plan: TripPlan, status: int) -> None:
        trips = self.trips
        info = trips.info[slot]
        prog = trips.progress[slot]
        assert info is not None and prog is not None
        old = info.plan
        route_slot, fslots, fstops, boxes = self.geometry.add_trip(plan)
        new_ids = [s.stop_id for s in plan.stops]
        self.geometry.remove_stop_fences(
            plan.trip_id, [s.stop_id for s in old.stops if s.stop_id not in new_ids]
        )
        m = trips.m[slot]
        cur = int(m[TC.CUR_STOP])
        cur_id = old.stops[cur].stop_id if cur >= 0 else None
        prog = trips.progress[slot] = reconcile_progress(info, prog, new_ids)
        m[TC.CUR_STOP] = new_ids.index(cur_id) if cur_id in new_ids else -1
        m[TC.NEXT_STOP] = prog.next_arrival()
        plan, digest = self._slim(plan)
        if digest != info.route_digest:
            m[TC.HINT] = -1
            info.route_digest = digest
        info.late_done = {
            new_ids.index(old.stops[i].stop_id)
            for i in info.late_done
            if old.stops[i].stop_id in new_ids
        }
        trips.route_slot[slot] = route_slot
        trips.planned_start[slot] = plan.planned_start_ms
        trips.set_stops(slot, *self._stop_arrays(plan, fslots, fstops, boxes))
        old_devices = info.device_slots
        info.plan = plan
        trips.shippers[slot] = plan.shipper
        info.device_slots = tuple(self.devices.slot(d) for d in plan.devices)
        info.gen = self._next_gen()
        trips.gen[slot] = info.gen
        trips.dirty[slot] = True
        self._apply_rules(slot, plan)
        self._take_status(slot, status)
        info.created = self.journal.snapshot_now(trips, self.devices, slot)
        for d in old_devices:
            self._device_trips.get(d, set()).discard(slot)
        for d in info.device_slots:
            self._device_trips.setdefault(d, set()).add(slot)
        self._remap(tuple(set(old_devices) | set(info.device_slots)))

    def _remove(self, slot: int, ended_ms: float | None = None) -> None:
        """Drop a trip; ``ended_ms``: when it ended (event time of its end, as the store
        records it; unknown: its newest message)."""
        info = self.trips.info[slot]
        assert info is not None
        m = self.trips.m[slot]
        start = m[TC.ACTIVE_SINCE]
        if math.isnan(start):  # never activated: the store spans it from its planned start
            start = self.trips.planned_start[slot]
        end = ended_ms if ended_ms is not None else m[TC.LAST_TS]
        if math.isfinite(start):
            for d in info.device_slots:
                self.devices.note_ended(d, float(start), float(end) if end == end else start)
        self.geometry.remove_trip(info.plan)
        del self._slots[info.trip_id]
        self._removed.add(info.trip_id)
        for d in info.device_slots:
            self._device_trips.get(d, set()).discard(slot)
        self.trips.release(slot)
        self._remap(info.device_slots)

    def unload_trip(self, trip_id: str) -> bool:
        """Drop a trip from the live state without ending it (its partition moved to another
        worker, which restores it from its checkpoint): nothing emitted, no span noted for
        its devices, its checkpoint kept (not reported by ``take_dirty``), its lock's waiting
        events dropped with it. Its devices report for their other loaded trips, if any.
        False when it was not loaded."""
        slot = self._slots.get(trip_id)
        if slot is None:
            return False
        info = self.trips.info[slot]
        assert info is not None
        for d in info.device_slots:
            if int(self.devices.trip[d]) == slot:
                self._waiting.pop(d, None)
        self.geometry.remove_trip(info.plan)
        del self._slots[trip_id]
        for d in info.device_slots:
            self._device_trips.get(d, set()).discard(slot)
        self.trips.release(slot)
        self._remap(info.device_slots)
        return True

    def loaded_trips(self) -> list[str]:
        """Every trip in the live state (planned and active)."""
        return list(self._slots)

    def note_ended_trip(self, device_id: str, start_ms: int, end_ms: int) -> None:
        """The device served a trip from ``start_ms`` to ``end_ms`` (event time) that has
        ended (read back from the store after a restart): its messages from then are that
        trip's, stored but not judged by the device's current trip unless that trip was
        already active at their ts."""
        self.devices.note_ended(self.devices.slot(device_id), float(start_ms), float(end_ms))

    def _foreign(self, dev: I64, ts: I64, trip: I64) -> npt.NDArray[np.bool_]:
        """Messages from before their trip's activation (any, for a planned trip) that lie
        in an ended trip's span of their device: that trip's backlog."""
        cand = (ts <= self.devices.ended_to[dev]) & (trip >= 0)
        if not cand.any():  # the common case: data newer than any ended trip of its device
            return cand
        cand &= ~(ts >= self.trips.m[np.maximum(trip, 0), TC.ACTIVE_SINCE])
        idx = np.flatnonzero(cand)
        if idx.size:
            cand[idx] = self.devices.in_ended(dev[idx], ts[idx])
        return cand

    def _remap(self, device_slots: Sequence[int]) -> None:
        """Point each device at its trip: the most recently activated active trip, else the
        planned trip starting first, else none."""
        m = self.trips.m
        for d in device_slots:
            best, best_key = -1, None
            for slot in self._device_trips.get(d, ()):
                status = m[slot, TC.STATUS]
                if status == ACTIVE:
                    key = (0, -m[slot, TC.ACTIVE_SINCE], slot)
                elif status == PLANNED:
                    key = (1, self.trips.planned_start[slot], slot)
                else:
                    continue
                if best_key is None or key < best_key:
                    best, best_key = slot, key
            old = int(self.devices.trip[d])
            if old != best:  # the device's rows now travel with another trip's state
                self.trips.dirty[[s for s in (old, best) if s >= 0]] = True
            self.devices.trip[d] = best

    def end_trip(self, trip_id: str, status: TripStatus, ts: int, reason: str) -> list[EngineEvent]:
        """Complete or cancel a trip from the API: TripStatusChanged (+ ``completed``
        milestone), open episodes end, the trip leaves the live state."""
        status = TripStatus(status)
        if status not in (TripStatus.COMPLETED, TripStatus.CANCELLED):
            raise RulesError(f"end_trip takes completed or cancelled, not {status.value}")
        slot = self._slots.get(trip_id)
        if slot is None:
            return []
        ctx = self._ctx(int(ts))
        finish(ctx, slot, status, int(ts), reason)
        self._after(ctx)
        return ctx.emit.events

    # -- messages ---------------------------------------------------------------------------
    def _ctx(self, now_ms: int) -> Ctx:
        return Ctx(self.trips, self.devices, self.geometry, Emitter(int(now_ms)), self._default_row)

    def _late_masks(
        self, f: FixCols, ftrip: I64, locks: LockCols, ltrip: I64
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Messages older than their device's processed data, or much older than their
        trip's: their trips are re-run from a snapshot."""
        dm, tm = self.devices.m, self.trips.m
        late_f = (ftrip >= 0) & (
            (f.ts < dm[f.dev, DC.LAST_TS])
            | (f.ts < tm[np.maximum(ftrip, 0), TC.LAST_TS] - CROSS_DEVICE_SKEW_MS)
        )
        late_l = (ltrip >= 0) & (
            (locks.ts < dm[locks.dev, DC.LAST_TS])
            | (locks.ts < tm[np.maximum(ltrip, 0), TC.LAST_TS] - CROSS_DEVICE_SKEW_MS)
        )
        return late_f, late_l

    def process(
        self, fixes: Sequence[Fix], lock_events: Sequence[LockEvent], now_ms: int
    ) -> EngineResult:
        """Apply one ingest batch (any devices, any order, backlogs included)."""
        ctx = self._ctx(now_ms)
        self.journal.maybe_checkpoint(self.trips, self.devices, int(now_ms))
        f = FixCols.from_fixes(fixes, self.devices)
        locks = LockCols.from_events(lock_events, self.devices)
        return self._released(self._process_cols(ctx, f, locks), int(now_ms))

    def process_columns(self, fixes: FixCols, locks: LockCols, now_ms: int) -> EngineResult:
        """``process`` for fixes already in columns (device slots from ``self.devices``)."""
        ctx = self._ctx(now_ms)
        self.journal.maybe_checkpoint(self.trips, self.devices, int(now_ms))
        return self._released(self._process_cols(ctx, fixes, locks), int(now_ms))

    # -- late unlocks wait for the truck's GPS --------------------------------------------
    def _gps_behind(self, slot: int, lock_dev: int, ts: int, f: FixCols, ftrip: I64) -> bool:
        """Whether trip ``slot`` has a GPS unit (another device with a valid fix) that has
        reported nothing at or after ``ts`` yet, this batch's fixes included."""
        info = self.trips.info[slot]
        if info is None:
            return False
        others = [d for d in info.device_slots if d != lock_dev]
        if not others:
            return False
        rows = self.devices.m[others]
        if np.isnan(rows[:, DC.VALID_TS]).all():
            return False  # no GPS unit that ever had a fix: the lock's word is all there is
        last = rows[:, DC.LAST_TS]
        reach = -1.0 if np.isnan(last).all() else float(np.nanmax(last))
        mine = (ftrip == slot) & np.isin(f.dev, others)
        if mine.any():
            reach = max(reach, float(f.ts[mine].max()))
        return bool(reach < ts)

    def _hold(
        self, ctx: Ctx, locks: LockCols, ltrip: I64, f: FixCols, ftrip: I64
    ) -> tuple[LockCols, I64]:
        """Set aside a late unlock whose truck's GPS has not reported up to its time.

        A backlog after a gap comes from the GPS unit and the e-lock separately, in either
        order (two MQTT sessions; in bus mode two device partitions). An unlock of the
        lock's backlog judged before the GPS's would be located by the last fix before the
        gap -- possibly within ``unlock_fix_max_age_s`` yet far from the stop where it
        happened -- and raise a false UNAUTHORIZED_UNLOCK that later data cannot undo. So
        an ``unlocked`` event that arrives more than ``CROSS_DEVICE_SKEW_MS`` after its
        ``ts`` waits, with every later event of its lock (per-device order), until the GPS
        has reported at or after its time, at most ``unlock_gps_wait_s`` of wall clock (120;
        0: never waits). A live unlock never waits. A waiting event was still heard: it
        counts against signal loss at once."""
        if not len(locks):
            return locks, ltrip
        held = (
            np.isin(locks.dev, np.fromiter(self._waiting, np.int64, len(self._waiting)))
            if self._waiting
            else np.zeros(len(locks), bool)
        )
        late = np.flatnonzero((ltrip >= 0) & (locks.recv - locks.ts > CROSS_DEVICE_SKEW_MS))
        for j in late.tolist():
            if held[j] or locks.events[j].event != LockEventType.UNLOCKED:
                continue
            if not self.trips.rules[int(ltrip[j]), RC.UNLOCK_GPS_WAIT_S] > 0:
                continue
            d, ts = int(locks.dev[j]), int(locks.ts[j])
            if self._gps_behind(int(ltrip[j]), d, ts, f, ftrip):
                held |= (locks.dev == d) & (locks.ts >= ts)
        if not held.any():
            return locks, ltrip
        trips = self.trips
        for j in np.flatnonzero(held).tolist():
            slot = int(ltrip[j])
            wait_ms = 0.0
            if slot >= 0:
                wait_ms = float(trips.rules[slot, RC.UNLOCK_GPS_WAIT_S]) * 1000.0
                trips.dirty[slot] = True
                trips.heard[slot] = np.fmax(trips.heard[slot], float(locks.recv[j]))
                if trips.signal_open[slot]:
                    end_signal_lost(ctx, slot, int(locks.ts[j]))
            by = int(locks.recv[j]) + int(wait_ms)
            self._waiting.setdefault(int(locks.dev[j]), []).append((locks.events[j], by))
        keep = np.flatnonzero(~held)
        return locks.take(keep), ltrip[keep]

    def _due(self, now_ms: int) -> list[LockEvent]:
        """The waiting events to judge now: their GPS caught up, their wait is over, or
        their device left the trip."""
        out: list[LockEvent] = []
        empty = FixCols.empty()
        none = np.zeros(0, np.int64)
        for d, items in list(self._waiting.items()):
            slot = int(self.devices.trip[d])
            first = min(e.ts for e, _ in items)
            if (
                slot < 0
                or min(by for _, by in items) <= now_ms
                or not self._gps_behind(slot, d, first, empty, none)
            ):
                out.extend(e for e, _ in items)
                del self._waiting[d]
                if slot >= 0:
                    self.trips.dirty[slot] = True
        return out

    def _released(self, result: EngineResult, now_ms: int) -> EngineResult:
        """``result`` plus what judging the waiting events that are due produced."""
        if not self._waiting:
            return result
        due = self._due(now_ms)
        if due:
            locks = LockCols.from_events(due, self.devices)
            more = self._process_cols(self._ctx(now_ms), FixCols.empty(), locks, hold=False)
            result.events.extend(more.events)
            result.flagged.extend(more.flagged)
        return result

    def waiting_unlocks(self) -> list[LockEvent]:
        """The late lock events waiting for their truck's GPS (``_hold``)."""
        return [e for items in self._waiting.values() for e, _ in items]

    def _process_cols(
        self, ctx: Ctx, f: FixCols, locks: LockCols, *, hold: bool = True
    ) -> EngineResult:
        fd = duplicate_mask(f.dev, f.ts, f.seq)
        if fd.any():
            f = f.take(~fd)
        ld = duplicate_mask(locks.dev, locks.ts, locks.seq)
        if ld.any():
            locks = locks.take(~ld)
        ftrip = self.devices.trip[f.dev]
        ltrip = self.devices.trip[locks.dev]
        # A device's backlog from a trip that has ended (the store has it; its track shows
        # it) is judged by no trip: the device's current trip may be another shipper's.
        # Not even as a device without a trip: its old positions would become the device's
        # latest and its next trip's reference (jump filter, locating an unlock).
        past_f = self._foreign(f.dev, f.ts, ftrip)
        if past_f.any():
            f, ftrip = f.take(~past_f), ftrip[~past_f]
        past_l = self._foreign(locks.dev, locks.ts, ltrip)
        if past_l.any():
            locks, ltrip = locks.take(~past_l), ltrip[~past_l]
        if hold:
            locks, ltrip = self._hold(ctx, locks, ltrip, f, ftrip)
        self.trips.dirty[ftrip[ftrip >= 0]] = True
        self.trips.dirty[ltrip[ltrip >= 0]] = True
        pre_valid = self.devices.m[f.dev, DC.VALID_TS]
        nf, nl = len(f), len(locks)
        valid = np.zeros(nf, bool)
        new_f = np.zeros(nf, bool)
        new_l = np.zeros(nl, bool)
        state = np.zeros(nf, np.int8)
        dist = np.full(nf, np.nan)
        late_f, late_l = self._late_masks(f, ftrip, locks, ltrip)
        quiet = np.zeros(nl, bool)
        if late_l.any():  # late lock events that change no state need no rewind
            rows = np.flatnonzero(late_l)
            quiet[rows] = state_free(self.trips, self.devices, locks, ltrip, rows)
        late = np.unique(np.concatenate([ftrip[late_f], ltrip[late_l & ~quiet]]))
        if late.size:
            in_late_f, in_late_l = np.isin(ftrip, late), np.isin(ltrip, late)
            quiet &= ~in_late_l
        else:
            in_late_f, in_late_l = np.zeros(nf, bool), np.zeros(nl, bool)
        if quiet.any():
            qi = np.flatnonzero(quiet)
            ctx.emit.rewind = True  # found late, like a rewind's alarms
            try:
                q = run(ctx, FixCols.empty(), np.zeros(0, np.int64), locks.take(qi), ltrip[qi])
            finally:
                ctx.emit.rewind = False
            new_l[qi] = ~q.lock_dup
        main_f = np.flatnonzero(~in_late_f)
        main_l = np.flatnonzero(~in_late_l & ~quiet)
        if main_f.size == nf and main_l.size == nl:
            out = run(ctx, f, ftrip, locks, ltrip)
        else:
            out = run(ctx, f.take(main_f), ftrip[main_f], locks.take(main_l), ltrip[main_l])
        valid[main_f], state[main_f], dist[main_f] = out.valid, out.state, out.dist
        new_f[main_f] = ~out.dup
        new_l[main_l] = ~out.lock_dup
        durable: list[int] = []
        if late.size:
            fi, li = np.flatnonzero(in_late_f), np.flatnonzero(in_late_l)
            n_flags = len(ctx.flagged)
            lf = f.take(fi)
            res, nfm, nlm, durable = rewind_trips(
                ctx, self.journal, late, lf, ftrip[fi], locks.take(li), ltrip[li], self._history
            )
            if len(ctx.flagged) > n_flags:  # keep flags of this batch's fixes only
                ids = self.devices.ids
                mine = {
                    (ids[d], t, None if np.isnan(q) else int(q))
                    for d, t, q in zip(
                        lf.dev[nfm].tolist(), lf.ts[nfm].tolist(), lf.seq[nfm].tolist(), strict=True
                    )
                }
                ctx.flagged[n_flags:] = [x for x in ctx.flagged[n_flags:] if x[0] in mine]
            valid[fi], state[fi], dist[fi] = res.valid, res.state, res.dist
            new_f[fi], new_l[li] = nfm, nlm
        self.journal.append(
            f.take(new_f) if not new_f.all() else f,
            ftrip[new_f],
            locks.take(new_l) if not new_l.all() else locks,
            ltrip[new_l],
        )
        for slot in durable:
            # Re-run from stored history: older checkpoints no longer describe the trip.
            info = self.trips.info[slot]
            assert info is not None
            info.gen = self._next_gen()
            self.trips.gen[slot] = info.gen
            info.created = self.journal.snapshot_now(self.trips, self.devices, slot)
        positions = self._positions(f, ftrip, valid & new_f, state, dist, pre_valid)
        self._after(ctx)
        events = ctx.emit.events
        if self._position_events and len(positions):
            events.extend(positions.updates())
        return EngineResult(events, ctx.flagged, positions)

    def _positions(
        self,
        f: FixCols,
        ftrip: I64,
        usable: npt.NDArray[np.bool_],
        state: npt.NDArray[np.int8],
        dist: F64,
        pre_valid: F64,
    ) -> PositionBatch:
        """The newest usable fix of each device, unless older than what was shown before."""
        idx = np.flatnonzero(usable)
        if idx.size == 0:
            return PositionBatch.empty()
        dev = f.dev[idx]
        if np.bincount(dev).max() == 1:  # one fix per device (the common live batch)
            last = idx
        else:
            order = idx[np.lexsort((f.ts[idx], dev))]
            dsorted = f.dev[order]
            last = order[np.append(dsorted[1:] != dsorted[:-1], True)]
        last = last[~(f.ts[last] < pre_valid[last])]
        tslots = ftrip[last]
        return PositionBatch(
            device_ids=self.devices.id_array[f.dev[last]],
            trip_ids=self.trips.names[tslots],
            shippers=self.trips.shippers[tslots],
            ts=f.ts[last],
            lat=f.lat[last],
            lon=f.lon[last],
            speed_kmh=f.speed[last],
            state=state[last],
            distance_to_route_m=dist[last],
        )

    def _after(self, ctx: Ctx) -> None:
        """Drop finished trips and re-point devices of trips whose status changed."""
        ended: dict[str, int] = {}
        if ctx.status_changed:
            for e in ctx.emit.events:
                if isinstance(e, TripStatusChanged) and e.status in _ENDED:
                    ended[e.trip_id] = e.ts
        for slot in sorted(ctx.status_changed):
            info = self.trips.info[slot]
            if info is None:
                continue
            if self.trips.m[slot, TC.STATUS] in (COMPLETED, CANCELLED):
                self._remove(slot, ended.get(info.trip_id))
            else:
                self._remap(info.device_slots)
        ctx.status_changed.clear()

    def tick(self, now_ms: int) -> list[EngineEvent]:
        """Wall-clock rules at ``now_ms``: activation at planned_start, SIGNAL_LOST,
        LATE_ARRIVAL. Call at least once a second."""
        released = self._released(EngineResult([]), int(now_ms)).events
        ctx = self._ctx(now_ms)
        trips = self.trips
        before = (trips.m[:, TC.STATUS].copy(), trips.heard.copy(), trips.signal_open.copy())
        run_timers(ctx, int(now_ms))
        # Timers change status, heard, signal episodes and late-arrival marks (the latter
        # always with an event): compare arrays rather than trace every path.
        status, heard, signal = before
        cap = status.shape[0]
        changed = (
            (trips.m[:cap, TC.STATUS] != status)
            | ((trips.heard[:cap] != heard) & ~np.isnan(trips.heard[:cap]))
            | (trips.signal_open[:cap] != signal)
        )
        trips.dirty[:cap] |= changed
        for e in ctx.emit.events:
            slot = self._slots.get(e.trip_id) if e.trip_id is not None else None
            if slot is not None:
                trips.dirty[slot] = True
        self._after(ctx)
        return released + ctx.emit.events

    def next_timer_ms(self) -> int | None:
        """Earliest wall time at which ``tick`` would do something (None: nothing pending)."""
        due = next_timer_ms(self.trips)
        for items in self._waiting.values():
            by = min(b for _, b in items)
            due = by if due is None else min(due, by)
        return due

    # -- durable state ----------------------------------------------------------------------
    def take_dirty(self) -> tuple[set[str], set[str]]:
        """(trips whose durable state changed, trips dropped from the live state) since the
        last call, which resets both: the caller checkpoints only what changed."""
        trips = self.trips
        idx = np.flatnonzero(trips.dirty & (trips.gen >= 0))
        dirty = set(trips.names[idx].tolist())
        trips.dirty[:] = False
        removed = {t for t in self._removed if t not in self._slots}
        self._removed = set()
        return dirty, removed

    def export_trip_state(self, trip_id: str) -> bytes:
        """The trip's durable state as a versioned blob (JSON, rules/checkpoint.py):
        event-time rows of the trip and of the devices it currently owns, stop progress,
        emitted keys, timers and the signal-lost episode. RulesError if not loaded."""
        slot = self._slots.get(trip_id)
        if slot is None:
            raise RulesError("trip is not in the live state", trip_id=trip_id)
        info = self.trips.info[slot]
        assert info is not None
        waiting = [
            item
            for d in info.device_slots
            if self.devices.trip[d] == slot
            for item in self._waiting.get(d, ())
        ]
        return dump_trip(self.trips, self.devices, slot, self._geofence_id, waiting)

    def _geofence_id(self, fence_slot: int) -> str | None:
        meta = self.geometry.geofence_meta(fence_slot)
        return None if meta is None else meta[0]

    def import_trip_state(self, trip_id: str, blob: bytes) -> None:
        """Continue a trip from ``export_trip_state``'s blob, after ``upsert_trip`` loaded its
        document. RulesError (state unchanged) when the trip is not loaded, or the blob is of
        another format version, another plan, or unreadable: the caller then falls back to
        the document and its milestone history."""
        slot = self._slots.get(trip_id)
        if slot is None:
            raise RulesError("trip is not in the live state", trip_id=trip_id)
        trips = self.trips
        doc_status = int(trips.m[slot, TC.STATUS])
        waiting = load_trip(
            trips, self.devices, slot, blob, self._slots, self.geometry.geofence_slot
        )
        for event, by in waiting:
            d = self.devices.slot(event.device_id)
            held = self._waiting.setdefault(d, [])
            if all((e.ts, e.seq, e.event) != (event.ts, event.seq, event.event) for e, _ in held):
                held.append((event, by))
        trips.dirty[slot] = False  # the state is what the caller has stored
        self._take_status(slot, doc_status)  # an activation by the API meanwhile holds
        update_late_deadline(trips, slot)
        info = trips.info[slot]
        assert info is not None
        # Checkpoints of the journal taken before no longer describe the trip.
        info.gen = self._next_gen()
        trips.gen[slot] = info.gen
        info.created = self.journal.snapshot_now(trips, self.devices, slot)
        self._remap(info.device_slots)

    # -- queries ----------------------------------------------------------------------------
    def active_trips(self) -> list[str]:
        """Ids of the active trips."""
        m = self.trips.m
        return sorted(
            info.trip_id
            for info in self.trips.info
            if info is not None and m[info.slot, TC.STATUS] == ACTIVE
        )

    def device_trip(self, device_id: str) -> str | None:
        """The trip a device currently reports for (active first, else next planned)."""
        d = self.devices.index.get(device_id)
        if d is None:
            return None
        slot = int(self.devices.trip[d])
        info = self.trips.info[slot] if slot >= 0 else None
        return None if info is None else info.trip_id

    def trip_state(self, trip_id: str) -> dict[str, Any]:
        """Live state of a trip for the UI; RulesError if the trip is not loaded."""
        slot = self._slots.get(trip_id)
        if slot is None:
            raise RulesError("trip is not in the live state", trip_id=trip_id)
        trips = self.trips
        info, prog = trips.info[slot], trips.progress[slot]
        assert info is not None and prog is not None
        m = trips.m[slot]
        status = STATUS_NAME[int(m[TC.STATUS])]
        stops = info.plan.stops
        last_fix = None
        if not np.isnan(m[TC.VALID_TS]):
            speed = m[TC.VALID_SPEED]
            last_fix = {
                "device_id": self.devices.ids[int(m[TC.VALID_DEV])],
                "ts": int(m[TC.VALID_TS]),
                "lat": float(m[TC.VALID_LAT]),
                "lon": float(m[TC.VALID_LON]),
                "speed_kmh": None if np.isnan(speed) else float(speed),
            }
        if trips.signal_open[slot]:
            state = "signal_lost"
        elif status != "active":
            state = status
        elif m[TC.OFF_NOW] == 1.0:
            state = "off_route"
        elif not np.isnan(m[TC.ANCHOR_TS]) and m[TC.VALID_TS] - m[TC.ANCHOR_TS] >= 120_000:
            state = "stopped"
        else:
            state = "on_route"
        nxt = next((i for i in range(len(stops)) if not prog.visited(i)), None)
        cur = int(m[TC.CUR_STOP])
        return {
            "trip_id": trip_id,
            "shipper": info.shipper,
            "status": status,
            "state": state,
            "last_fix": last_fix,
            "distance_to_route_m": None if np.isnan(m[TC.DIST]) else round(float(m[TC.DIST]), 1),
            "lock_state": LOCK_NAMES[int(m[TC.LOCK_STATE])],
            "sealed": bool(m[TC.SEALED]),
            "departed": bool(m[TC.DEPARTED]),
            "current_stop": stops[cur].stop_id if cur >= 0 else None,
            "next_stop": None if nxt is None else stops[nxt].stop_id,
            "arrived_stops": [s.stop_id for i, s in enumerate(stops) if prog.arrived[i] >= 0],
            "visited_stops": [s.stop_id for i, s in enumerate(stops) if prog.visited(i)],
            "open_episodes": sorted(open_episodes(trips, self.devices.m, slot))
            + ([info.signal_episode] if info.signal_episode else []),
            "last_message_ts": None if np.isnan(m[TC.LAST_TS]) else int(m[TC.LAST_TS]),
            "devices": list(info.plan.devices),
        }
