"""The rule engine behind its lock, and the one way to change it.

Every change of the engine's state — a batch of messages, a tick of the wall-clock rules, a
trip created or ended from the API, a shipper's thresholds — goes through
:meth:`EngineGate.commit`: the change, the alarms and milestones it emits and the checkpoint
of every trip it touched are written in ONE store transaction. If anything in it fails, the
transaction rolls back and the engine is rebuilt from the store's last checkpoint, so the
engine never runs ahead of what is stored: a batch that is retried is evaluated again, and
one that was committed is never evaluated twice (the store de-duplicates its telemetry).

Lock order, the same on every path: engine lock, then the alarm service's lock, then the
store's unit of work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from alerts import AlarmService
from core.clock import Clock
from rules import Engine
from rules.events import EngineEvent
from telemetry.models import Fix, LockEvent
from telemetry.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Doc = dict[str, Any]


class EngineGate:
    """One ``Engine``, the lock every caller holds while using it, and its durable state."""

    def __init__(self, store: Store, alarms: AlarmService, clock: Clock) -> None:
        self.store = store
        self.alarms = alarms
        self.clock = clock
        self.lock = threading.RLock()
        self.engine = self._new_engine()
        self.reloads = 0
        self._stale = False

    def _new_engine(self) -> Engine:
        return Engine(history=self._history)

    def _history(
        self, device_ids: Sequence[str], since_ms: int, until_ms: int
    ) -> tuple[Sequence[Fix], Sequence[LockEvent]]:
        # Called by the engine inside a batch's unit of work (same thread, same connection).
        devices = list(device_ids)
        return (
            self.store.fixes(devices, since_ms, until_ms),
            self.store.lock_events(devices, since_ms, until_ms),
        )

    @contextmanager
    def held(self) -> Iterator[Engine]:
        """The engine, for reads (a change goes through :meth:`commit`)."""
        with self.lock:
            yield self.engine

    def commit(
        self,
        change: Callable[[Engine], T],
        events_of: Callable[[T], Sequence[EngineEvent]],
        *,
        before: Callable[[], None] | None = None,
        after: Callable[[T], None] | None = None,
    ) -> tuple[T, list[Doc]]:
        """Apply ``change`` to the engine and record its events and checkpoint in one
        transaction; ``before`` runs first in that transaction (the batch's telemetry),
        ``after`` last (e.g. flags on stored fixes). Returns the change's result and the new
        alarms. On any failure nothing is kept: the engine is rebuilt from the store and the
        error propagates."""
        with self.lock, self.alarms.locked():
            if self._stale:
                self.reload()  # the last reload failed (store down): not on a stale engine
            try:
                with self.store.unit_of_work():
                    if before is not None:
                        before()
                    result = change(self.engine)
                    created, live = self.alarms.stage(events_of(result))
                    if after is not None:
                        after(result)
                    self._checkpoint()
            except BaseException:
                try:
                    self.reload()
                except Exception:
                    log.exception("engine state could not be reloaded; retried before next use")
                raise
        self.alarms.publish(live)
        return result, created

    def load(self) -> None:
        """Start-up: the engine from the store, and a checkpoint of what loading changed
        (trips that had none yet)."""
        self.commit(lambda engine: load_engine(self.store, engine), lambda _: ())

    def _checkpoint(self) -> None:
        changed, removed = self.engine.take_dirty()
        if not changed and not removed:
            return
        states = {t: self.engine.export_trip_state(t) for t in changed}
        self.store.save_engine_states(states, removed, at_ms=self.clock.now_ms())

    def reload(self) -> None:
        """Rebuild the engine from the store: its state as of the last commit. If the store
        cannot be read, the engine is marked stale and the next :meth:`commit` retries."""
        with self.lock:
            self.reloads += 1
            self._stale = True
            engine = self._new_engine()
            load_engine(self.store, engine)
            engine.take_dirty()  # what was loaded is what is stored
            self.engine = engine
            self._stale = False


def load_engine(store: Store, engine: Engine) -> None:
    """Shipper rules, geofences and open trips from the store into ``engine``, each trip
    continuing from its stored checkpoint. Each stored object is loaded on its own: one the
    engine refuses (written by an older version, or by hand) is logged and skipped — a
    shipper then runs on the default thresholds, a trip without a usable checkpoint from its
    document and milestone history — instead of stopping the whole service."""
    for shipper in store.list_shippers():
        try:
            engine.put_shipper_rules(shipper["shipper"], shipper.get("rules") or {})
        except Exception as exc:
            log.error(
                "stored rules of shipper %s not loaded, it runs on the defaults: %s",
                shipper.get("shipper"),
                exc,
            )
    for fence in store.list_geofences():
        try:
            engine.put_geofence(fence)
        except Exception:
            log.exception("stored geofence %s could not be loaded", fence.get("geofence_id"))
    states = store.engine_states()
    for status in ("planned", "active"):
        for trip in store.list_trips(status=status, limit=1_000_000):
            trip_id = trip.get("trip_id")
            try:
                engine.upsert_trip(trip, store.trip_events(trip["trip_id"]))
            except Exception:
                log.exception("stored trip %s could not be loaded", trip_id)
                continue
            blob = states.get(str(trip_id))
            if blob is None:
                continue
            try:
                engine.import_trip_state(str(trip_id), blob)
            except Exception as exc:
                log.error(
                    "checkpoint of trip %s not used (%s); it continues from its milestones",
                    trip_id,
                    exc,
                )
