"""The rule engine behind its lock, and the one way to change it.

Every change of the engine's state — a batch of messages, a tick of the wall-clock rules, a
trip created or ended from the API, a shipper's thresholds — goes through
:meth:`EngineGate.commit`: the batch's telemetry, the change, and the alarms, milestones and
outbox rows it emits are written in ONE store transaction. If anything in it fails, the
transaction rolls back and the engine is rebuilt from the store, so the engine never runs
ahead of what is stored: a batch that is retried is evaluated again, and one that was
committed is never evaluated twice (the store de-duplicates its telemetry).

The engine's per-trip checkpoints are written in such a transaction too, but at most every
``checkpoint_every_s`` (writing 1,400 trips' state every batch would cost several times the
rules themselves). Each checkpoint records the receive time it covers; a rebuild imports it
and re-runs the trip's messages stored since. What that re-run emits again is already
stored and is recognised by its identity — an alarm per (trip, type, episode), a milestone
and a webhook event by their stable ids — so nothing is raised or sent twice.

Lock order, the same on every path: engine lock, then the alarm service's lock, then the
store's unit of work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from alerts import AlarmService
from core.clock import Clock
from rules import HISTORY_LOOKBACK_MS, Engine, PositionBatch
from rules.events import EngineEvent
from telemetry.models import Fix, LockEvent
from telemetry.store import Store
from telemetry.store.spans import trip_span

log = logging.getLogger(__name__)

#: how often (real seconds) the engine's changed trips are checkpointed
CHECKPOINT_EVERY_S = 5.0

T = TypeVar("T")
Doc = dict[str, Any]


class EngineGate:
    """One ``Engine``, the lock every caller holds while using it, and its durable state."""

    def __init__(
        self,
        store: Store,
        alarms: AlarmService,
        clock: Clock,
        *,
        trip_filter: Callable[[str], bool] | None = None,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        self.store = store
        self.alarms = alarms
        self.clock = clock
        # Partitioned engine (bus mode): this gate holds only the trips the filter admits.
        self.trip_filter = trip_filter
        self.checkpoint_every_s = checkpoint_every_s
        #: every message received up to this time (epoch ms) has been committed
        self.covered_to = 0
        self._last_checkpoint = time.monotonic()
        self.lock = threading.RLock()
        self.engine = self._new_engine()
        self.reloads = 0
        self._stale = False

    def _new_engine(self) -> Engine:
        # Positions stay in columns (EngineResult.positions): the live feed's events are
        # built from them, and only with a reader (alerts.positions).
        return Engine(history=self._history, position_events=False)

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
        covers: int | None = None,
        positions_of: Callable[[T], PositionBatch] | None = None,
    ) -> tuple[T, list[Doc]]:
        """Apply ``change`` to the engine and record its events and checkpoint in one
        transaction; ``before`` runs first in that transaction (the batch's telemetry),
        ``after`` last (e.g. flags on stored fixes). Returns the change's result and the new
        alarms; ``covers``: the newest receive time of the messages this commit stores. On any
        failure nothing is kept: the engine is rebuilt from the store and the error
        propagates."""
        with self.lock, self.alarms.locked():
            if self._stale:
                self.reload()  # the last reload failed (store down): not on a stale engine
            try:
                with self.store.unit_of_work():
                    if before is not None:
                        before()
                    result = change(self.engine)
                    positions = positions_of(result) if positions_of is not None else None
                    created, live = self.alarms.stage(events_of(result), positions)
                    if after is not None:
                        after(result)
                    covered = max(self.covered_to, covers or 0)
                    self._checkpoint(covered)
            except BaseException:
                try:
                    self.reload()
                except Exception:
                    log.exception("engine state could not be reloaded; retried before next use")
                raise
        self.covered_to = covered
        self.alarms.publish(live)
        return result, created

    def load(self) -> None:
        """Start-up: the engine from the store (checkpoints, then the messages stored since),
        and a checkpoint of the result."""
        with self.lock:
            self.engine = self._new_engine()
            covered, _ = self.commit(self._load_into, lambda _: ())
            self.covered_to = max(self.covered_to, covered)
            with self.store.unit_of_work():
                self._checkpoint(self.covered_to, force=True)

    def _load_into(self, engine: Engine) -> int:
        return load_engine(self.store, engine, self.clock.now_ms(), trip_filter=self.trip_filter)

    def _checkpoint(self, covered: int, force: bool = False) -> None:
        due = time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s
        if not (due or force):
            return
        changed, removed = self.engine.take_dirty()
        if changed or removed:
            states = {t: self.engine.export_trip_state(t) for t in changed}
            self.store.save_engine_states(states, removed, at_ms=covered)
        self._last_checkpoint = time.monotonic()

    def flush(self) -> None:
        """Checkpoint every changed trip now (a graceful stop: the next start re-runs
        nothing)."""
        with self.lock, self.store.unit_of_work():
            self._checkpoint(self.covered_to, force=True)

    def reload(self) -> None:
        """Rebuild the engine from the store: its state as of the last commit. If the store
        cannot be read, the engine is marked stale and the next :meth:`commit` retries."""
        with self.lock:
            self.reloads += 1
            self._stale = True
            engine = self._new_engine()
            self._load_into(engine)
            self.engine = engine
            self._stale = False


def load_ended_spans(store: Store, engine: Engine, devices: Iterable[str]) -> None:
    """Tell the engine the spans of the devices' trips that have ended (as the store's
    track reads them, ``trip_span``): a late backlog from one of them is that trip's, after
    a restart as before it, and not judged by the device's current trip. One read per
    device; call before the engine processes the devices' stored messages."""
    for device_id in dict.fromkeys(devices):
        for other in store.trips_for_device(device_id):
            if other.get("status") not in ("completed", "cancelled"):
                continue
            # the status events only when the document lacks its activation time
            events = (
                ()
                if other.get("activated_at") is not None
                else (store.trip_events(str(other.get("trip_id"))))
            )
            start, end = trip_span(other, events)
            if end is not None and start < 2**62:
                engine.note_ended_trip(device_id, start, end)


def load_engine(
    store: Store,
    engine: Engine,
    now_ms: int,
    *,
    trip_filter: Callable[[str], bool] | None = None,
) -> int:
    """Shipper rules, geofences and open trips from the store into ``engine`` (``load_trips``).
    Each stored object is loaded on its own: one the engine refuses (written by an older
    version, or by hand) is logged and skipped — a shipper then runs on the default
    thresholds — instead of stopping the whole service. ``trip_filter`` (bus mode): only the
    trips it admits. Returns the newest receive time the loaded state covers."""
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
    covered = load_trips(store, engine, now_ms, trip_filter=trip_filter)
    engine.take_dirty()  # what was loaded is stored; the caller checkpoints from here
    return covered


def load_trips(
    store: Store,
    engine: Engine,
    now_ms: int,
    *,
    trip_filter: Callable[[str], bool] | None = None,
) -> int:
    """The open trips ``trip_filter`` admits (all without one) into ``engine``: each from its
    checkpoint, then the messages stored since (received after the checkpoint, within
    ``HISTORY_LOOKBACK_MS``), re-run in one engine call; what that emits again is recognised
    by the store and not raised twice. A trip without a usable checkpoint runs from its
    document, its milestone history and all its stored messages. Also adds a bus-mode
    worker's newly acquired partition to the trips it holds. Returns the newest receive time
    the loaded state covers."""
    states = store.engine_states()
    horizon = now_ms - HISTORY_LOOKBACK_MS
    fixes: list[Fix] = []
    events: list[LockEvent] = []
    loaded_devices: list[str] = []
    for status in ("planned", "active"):
        for trip in store.list_trips(status=status, limit=1_000_000):
            trip_id = str(trip.get("trip_id"))
            if trip_filter is not None and not trip_filter(trip_id):
                continue
            try:
                engine.upsert_trip(trip, store.trip_events(trip_id))
            except Exception:
                log.exception("stored trip %s could not be loaded", trip_id)
                continue
            since: int | None = None
            blob = states.get(trip_id)
            if blob is not None:
                try:
                    engine.import_trip_state(trip_id, blob[0])
                    since = blob[1]
                except Exception as exc:
                    log.error(
                        "checkpoint of trip %s not used (%s); it is re-run from its messages",
                        trip_id,
                        exc,
                    )
            devices = [str(d) for d in trip.get("devices") or []]
            loaded_devices += devices
            fixes += store.fixes(devices, horizon, received_since=since)
            events += store.lock_events(devices, horizon, received_since=since)
    load_ended_spans(store, engine, loaded_devices)
    # What the checkpoints do not cover yet, in one engine call (event-time order per
    # device); what it emits again is recognised by the store and not raised twice.
    engine.process(fixes, events, now_ms)
    received = [f.received_at for f in fixes] + [e.received_at for e in events]
    return max([at for _, at in states.values()] + received, default=0)
