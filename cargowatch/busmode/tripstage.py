"""Stage 2: one TRIPS partition → its own engine → the store, exactly once.

A ``TripPartition`` is made when a worker acquires trip partition ``n``: its own
``EngineGate`` (its own ``Engine`` and ``AlarmService``) restored from the store's checkpoints
of the trips that map to ``n`` (``trip_filter``). Each batch goes through the same steps as
``cargowatch.pipeline.Pipeline``: the batch's telemetry, the rules' verdicts, alarms, outbox
rows and the touched trips' checkpoints in ONE store transaction (``EngineGate.commit``); the
consumer acknowledges after it returns. Records arrive validated (stage 1), so nothing is
parsed again (``codec``): in bundles of many records, or (written before bundles) one a
message.

**Idempotent, because a lease can move while a commit is in flight.** The old owner's commit
may land after the new owner restored the partition. Telemetry de-duplicates (the engine only
evaluates newly stored records), alarms have an identity per (trip, type, episode),
milestones stable ids, checkpoints are upserts: a redelivered batch raises nothing twice.

A trip unknown to this gate (created after the gate was restored, e.g. through the API of
another process) is loaded from the store when its first message arrives, or when the
control subject says it changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import rules
from alerts import AlarmService, LiveHub
from cargowatch.busmode.codec import BUNDLE, decode, decode_bundle
from cargowatch.metrics import Metrics
from cargowatch.pipeline import commit_batch
from cargowatch.services.engine import EngineGate, load_ended_spans
from core.clock import Clock
from rules import HISTORY_LOOKBACK_MS, Engine, EngineEvent
from telemetry.bus.consumer import BusMessage
from telemetry.bus.partitions import trip_partition
from telemetry.bus.rekey import TRIP_HEADER
from telemetry.models import DeadLetter, DeadLetterReason, Fix, LockEvent
from telemetry.store import Store

log = logging.getLogger(__name__)

ENDED = ("completed", "cancelled")
SLOW_BATCH_S = 0.5


def refresh_trip(store: Store, engine: Engine, trip_id: str, now_ms: int) -> list[EngineEvent]:
    """Bring one trip in ``engine`` up to the store: loaded when missing (its checkpoint,
    then its devices' messages received since, as ``load_engine`` does at a start), its
    document taken over when loaded, dropped when ended or gone. Returns what that emitted,
    for the caller to stage: the messages re-run may include the very batch that named the
    trip (stored just before, in the same transaction), whose alarms exist nowhere else;
    what was emitted before is recognised by the store's identities."""
    doc = store.get_trip(trip_id)
    loaded = _loaded(engine, trip_id)
    if doc is None or doc.get("status") in ENDED:
        if loaded:
            return engine.upsert_trip({**(doc or {"trip_id": trip_id}), "status": "completed"})
        return []
    if doc.get("status") not in ("planned", "active"):
        return []
    out = engine.upsert_trip(doc, store.trip_events(trip_id))
    if loaded:
        return out
    devices = [str(d) for d in doc.get("devices") or []]
    # a backlog from the devices' earlier, ended trips is theirs, not this trip's
    load_ended_spans(store, engine, devices)
    entry = store.engine_state(trip_id)
    if entry is None:
        return out  # a new trip: nothing of it stored yet
    try:
        engine.import_trip_state(trip_id, entry[0])
    except rules.RulesError as exc:
        log.error("checkpoint of trip %s not used (%s)", trip_id, exc)
        return out
    horizon = now_ms - HISTORY_LOOKBACK_MS
    fixes = store.fixes(devices, horizon, received_since=entry[1])
    events = store.lock_events(devices, horizon, received_since=entry[1])
    if fixes or events:
        out += engine.process(fixes, events, now_ms).events
    return out


def _loaded(engine: Engine, trip_id: str) -> bool:
    try:
        engine.trip_state(trip_id)
    except (KeyError, rules.RulesError):
        return False
    return True


class TripPartition:
    """Trip partition ``n`` of ``partitions``: its gate, its batches and its tick."""

    def __init__(
        self,
        n: int,
        partitions: int,
        *,
        store: Store,
        clock: Clock,
        hub: LiveHub,
        metrics: Metrics,
    ) -> None:
        self.n = n
        self.partitions = partitions
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.alarms = AlarmService(store, clock, hub, metrics=metrics)
        self.gate = EngineGate(store, self.alarms, clock, trip_filter=self.holds)
        self.closed = False
        self._checked: set[str] = set()  # trips named by messages, looked up once
        self.evaluated_to = clock.now_ms()
        self._horizon = self.evaluated_to
        self._lock = threading.Lock()
        self.batches = 0
        self.alarms_raised = 0

    def holds(self, trip_id: str) -> bool:
        return trip_partition(trip_id, self.partitions) == self.n

    def load(self) -> None:
        """Restore the partition's trips from their checkpoints (on acquiring it)."""
        self.gate.load()

    def close(self) -> None:
        """The partition was lost or released (before another worker can claim it):
        checkpoint what changed, then no tick or change through this gate any more."""
        with self.gate.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.gate.flush()
            except Exception as exc:  # the next owner re-runs from the last checkpoint
                log.warning("checkpoint of trip partition %d at hand-over failed: %s", self.n, exc)

    # -- batches ----------------------------------------------------------------------------
    def process(self, batch: Sequence[BusMessage]) -> int:
        """Store and evaluate one batch; returns the alarms raised. Store errors propagate
        (the consumer then gives the batch back and it is redelivered)."""
        t0 = time.perf_counter()
        fixes: list[Fix] = []
        events: list[LockEvent] = []
        dead: list[DeadLetter] = []
        named: set[str] = set()
        for m in batch:
            try:
                if m.device_id is None:
                    raise ValueError("no device in the subject")
                if m.kind == BUNDLE:
                    entries = decode_bundle(m.data)
                else:  # one record a message (before bundles)
                    entries = [(decode(m.device_id, m.data), (m.headers or {}).get(TRIP_HEADER))]
            except Exception as exc:
                dead.append(
                    DeadLetter(
                        m.topic,
                        m.data[:65536],
                        m.timestamp_ns // 1_000_000,
                        DeadLetterReason.SCHEMA,
                        f"not a re-keyed record: {exc}",
                        m.device_id,
                    )
                )
                continue
            for record, trip in entries:
                if isinstance(record, Fix):
                    fixes.append(record)
                else:
                    events.append(record)
                if trip and trip not in self._checked:
                    named.add(trip)
        now = self.clock.now_ms()
        received = [f.received_at for f in fixes] + [e.received_at for e in events]

        def refresh(engine: Engine) -> list[EngineEvent]:
            out: list[EngineEvent] = []
            for trip_id in named:
                if self.holds(trip_id):
                    out += refresh_trip(self.store, engine, trip_id, now)
            return out

        with self.gate.lock:
            if self.closed:
                raise RuntimeError(f"trip partition {self.n} was lost")
            done = commit_batch(
                self.gate,
                self.metrics,
                fixes,
                events,
                dead,
                now,
                covers=max(received, default=None),
                prepare=refresh,
            )
        created, marks = done.created, done.marks
        self._checked |= named
        new_f, new_e = done.fixes, done.events
        metrics = self.metrics
        metrics.fixes_stored.inc(len(new_f))
        metrics.lock_events_stored.inc(len(new_e))
        metrics.duplicates.inc(len(fixes) - len(new_f) + len(events) - len(new_e))
        metrics.batch_size.observe(len(batch))
        if received:
            with self._lock:
                self.evaluated_to = max(self.evaluated_to, max(received))
            lag_s = max(0, now - min(received)) / 1000
            metrics.last_batch_lag_seconds.set(lag_s)
            metrics.ingest_lag_seconds.observe(lag_s)
        self.batches += 1
        self.alarms_raised += len(created)
        elapsed = time.perf_counter() - t0
        if elapsed > SLOW_BATCH_S:
            log.warning(
                "slow batch on trip partition %d: %d messages in %.2f s (store %.2f)",
                self.n,
                len(batch),
                elapsed,
                marks.get("store", t0) - t0,
            )
        return len(created)

    # -- wall-clock rules and changes from the API ------------------------------------------
    def tick(self, now: int, backlog: bool) -> int:
        """Signal loss, late arrival, activation up to the horizon (as ``Pipeline.tick``: with
        messages of this partition waiting, only up to what has been evaluated)."""
        with self._lock:
            seen = now if not backlog else min(now, self.evaluated_to)
            self._horizon = max(self._horizon, seen)
            at = self._horizon
        with self.gate.lock:
            if self.closed:
                return 0
            _, created = self.gate.commit(lambda engine: engine.tick(at), lambda events: events)
        self.alarms_raised += len(created)
        return len(created)

    def refresh(self, trip_id: str) -> None:
        """A trip of this partition changed in the store (created, changed, ended)."""
        with self.gate.lock:
            if self.closed:
                return
            now = self.clock.now_ms()
            self.gate.commit(
                lambda engine: refresh_trip(self.store, engine, trip_id, now),
                lambda events: events,
            )
            self._checked.add(trip_id)

    def note_ended(self, devices: list[str]) -> None:
        """A trip of these devices changed (maybe ended): the spans of their ended trips, for
        the trips of this partition that share a device with it (the ended trip may sit in
        another partition, whose engine alone saw it end)."""
        with self.gate.lock:
            if self.closed:
                return
            with self.gate.held() as engine:
                mine = [d for d in devices if engine.device_trip(d) is not None]
                if mine:
                    load_ended_spans(self.store, engine, mine)

    def put_shipper(self, shipper: str) -> None:
        doc = self.store.get_shipper(shipper)
        if doc is None:
            return
        with self.gate.lock:
            if self.closed:
                return
            self.gate.commit(
                lambda engine: engine.put_shipper_rules(shipper, doc.get("rules") or {}),
                lambda _: (),
            )

    def put_geofence(self, geofence_id: str) -> None:
        doc = self.store.get_geofence(geofence_id)
        with self.gate.lock:
            if self.closed:
                return
            with self.gate.held() as engine:
                if doc is None:
                    engine.remove_geofence(geofence_id)
                else:
                    engine.put_geofence(doc)
