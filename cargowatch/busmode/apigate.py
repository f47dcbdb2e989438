"""The engine gate of ``serve --bus``: API changes only, never telemetry.

In bus mode the live state of every trip is held by the worker that owns its trip partition;
the serve process's own engine must never write a stale view of a trip over the worker's
checkpoint. So this gate's engine holds nothing between calls: each change (or read) starts
from an empty engine with the shippers' rules, and a trip it names is loaded from the store —
document, milestones and the worker's last checkpoint — just before it is used
(``OnDemandEngine``). A commit then checkpoints exactly the trips the change touched (a trip
created: its first state; a trip ended: its checkpoint deleted), and after the commit the
workers are told (``control``) so the owner of the trip's partition reloads it.

Cost: one trip load per API change that names a trip (its checkpoint read with the others:
``Store.engine_states`` has no per-trip form yet), nothing per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from alerts import AlarmService
from cargowatch.busmode.control import Notify
from cargowatch.busmode.tripstage import refresh_trip
from cargowatch.services.engine import EngineGate
from core.clock import Clock
from rules import Engine, PositionBatch, TripStatus
from rules.events import EngineEvent
from telemetry.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")


class OnDemandEngine(Engine):
    """An engine that loads a trip from the store when a call names it."""

    def __init__(self, store: Store, clock: Clock, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = store
        self._clock = clock
        self.touched_shippers: set[str] = set()
        self.touched_geofences: set[str] = set()
        self._ensuring: set[str] = set()

    def _ensure(self, trip_id: object) -> None:
        if not isinstance(trip_id, str) or trip_id in self._slots or trip_id in self._ensuring:
            return
        self._ensuring.add(trip_id)  # refresh_trip calls back in here
        try:
            refresh_trip(self._store, self, trip_id, self._clock.now_ms())
        finally:
            self._ensuring.discard(trip_id)

    def upsert_trip(
        self, doc: dict[str, Any], history: Sequence[dict[str, Any]] = ()
    ) -> list[EngineEvent]:
        if isinstance(doc, Mapping):
            self._ensure(doc.get("trip_id"))
        return super().upsert_trip(doc, history)

    def end_trip(self, trip_id: str, status: TripStatus, ts: int, reason: str) -> list[EngineEvent]:
        self._ensure(trip_id)
        return super().end_trip(trip_id, status, ts, reason)

    def trip_state(self, trip_id: str) -> dict[str, Any]:
        self._ensure(trip_id)
        return super().trip_state(trip_id)

    def put_shipper_rules(self, shipper: str, rules: Mapping[str, float]) -> None:
        super().put_shipper_rules(shipper, rules)
        self.touched_shippers.add(shipper)

    def put_geofence(self, fence: dict[str, Any]) -> None:
        super().put_geofence(fence)
        self.touched_geofences.add(str(fence.get("geofence_id")))


class ApiGate(EngineGate):
    """``EngineGate`` over an ``OnDemandEngine`` made afresh for every change and read."""

    def __init__(
        self, store: Store, alarms: AlarmService, clock: Clock, notify: Notify | None = None
    ) -> None:
        self.notify: Notify = notify or (lambda doc: None)
        self._touched: set[str] = set()
        super().__init__(store, alarms, clock)

    def _new_engine(self) -> Engine:
        engine = OnDemandEngine(self.store, self.clock, history=self._history)
        for shipper in self.store.list_shippers():
            try:
                Engine.put_shipper_rules(engine, shipper["shipper"], shipper.get("rules") or {})
            except Exception as exc:
                log.error("stored rules of shipper %s not loaded: %s", shipper.get("shipper"), exc)
        return engine

    def load(self) -> None:
        """Nothing to restore: the workers hold the trips."""
        self.engine = self._new_engine()

    def reload(self) -> None:
        with self.lock:
            self.reloads += 1
            self.engine = self._new_engine()
            self._stale = False

    @contextmanager
    def held(self) -> Iterator[Engine]:
        with self.lock:
            engine = self.engine = self._new_engine()
            yield engine
            if isinstance(engine, OnDemandEngine):
                for fence in engine.touched_geofences:
                    self.notify({"geofence": fence})

    def commit(
        self,
        change: Callable[[Engine], T],
        events_of: Callable[[T], Sequence[EngineEvent]],
        *,
        before: Callable[[], None] | None = None,
        after: Callable[[T], None] | None = None,
        covers: int | None = None,
        positions_of: Callable[[T], PositionBatch] | None = None,
    ) -> tuple[T, list[dict[str, Any]]]:
        with self.lock:
            self.engine = engine = self._new_engine()
            self._touched = set()
            # A created trip's checkpoint covers what was received before it existed.
            out = super().commit(
                change,
                events_of,
                before=before,
                after=after,
                covers=self.clock.now_ms(),
                positions_of=positions_of,
            )
            touched, self._touched = self._touched, set()
        # Committed: the workers reload what changed.
        for trip_id in sorted(touched):
            doc = self.store.get_trip(trip_id) or {}
            self.notify({"trip": trip_id, "devices": list(doc.get("devices") or [])})
        if isinstance(engine, OnDemandEngine):
            for shipper in sorted(engine.touched_shippers):
                self.notify({"shipper": shipper})
        return out

    def _checkpoint(self, covered: int, force: bool = False) -> None:
        # Always now (not every few seconds): the trip an API change touched is the worker's
        # again once this commits.
        changed, removed = self.engine.take_dirty()
        self._touched |= changed | removed
        if changed or removed:
            states = {t: self.engine.export_trip_state(t) for t in changed}
            self.store.save_engine_states(states, removed, at_ms=covered)
