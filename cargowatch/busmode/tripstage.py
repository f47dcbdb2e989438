"""Stage 2: a worker's TRIPS partitions → ONE engine → the store, exactly once.

A worker's ``TripStage`` holds one ``EngineGate`` (one ``Engine`` and ``AlarmService``) for
every trip partition the worker holds: its ``trip_filter`` admits the trips of those
partitions. A round of batches (``busmode.rounds``: one batch per partition, handed over on
the same beat) goes through the same steps as ``cargowatch.pipeline.Pipeline``: the batches'
telemetry, the rules' verdicts, alarms, outbox rows and the touched trips' checkpoints in ONE
store transaction (``EngineGate.commit``); each consumer acknowledges its batch after it
returns. Records arrive validated (stage 1), so nothing is parsed again (``codec``): in
bundles of many records, or (written before bundles) one a message.

**One engine, not one a partition.** A batch's cost is mostly fixed (the transaction, the
COPY, the rules' array set-up), so an engine per partition cost a worker holding 8 of 16
partitions 8 of them a beat. A partition acquired adds its trips to the engine before its
next use (``load_trips``: each trip's checkpoint, then its messages stored since; partitions
acquired together share one load); a partition lost has its trips checkpointed, then
dropped from the engine without ending them (``Engine.unload_trip``), before its lease is
given up. (Rebuilding the whole engine instead took 7-16 s for 700-1,400 trips, once per
partition moved, while a second worker took its share.)

**Idempotent, because a lease can move while a commit is in flight.** The old owner's commit
may land after the new owner restored the partition. Telemetry de-duplicates (the engine only
evaluates newly stored records), alarms have an identity per (trip, type, episode),
milestones stable ids, checkpoints are upserts: a redelivered batch raises nothing twice.

A trip unknown to the engine (created after it was loaded, e.g. through the API of another
process) is loaded from the store when its first message arrives, or when the control
subject says it changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence, Set

import rules
from alerts import AlarmService, LiveHub
from cargowatch.busmode.codec import BUNDLE, decode, decode_bundle
from cargowatch.metrics import Metrics
from cargowatch.pipeline import commit_batch
from cargowatch.services.engine import EngineGate, load_ended_spans, load_trips
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


class TripStage:
    """Stage 2 of one worker: one engine over every trip partition it holds."""

    def __init__(
        self,
        partitions: int,
        *,
        store: Store,
        clock: Clock,
        hub: LiveHub,
        metrics: Metrics,
    ) -> None:
        self.partitions = partitions
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.alarms = AlarmService(store, clock, hub, metrics=metrics)
        self.gate = EngineGate(store, self.alarms, clock, trip_filter=self.holds)
        self.owned: frozenset[int] = frozenset()
        self._pending: set[int] = set()  # acquired, their trips not loaded yet
        self._loaded = False
        self._checked: set[str] = set()  # trips named by messages, looked up once
        # per partition: every message received up to this time has been evaluated
        self.evaluated_to: dict[int, int] = {}
        self._horizon = clock.now_ms()
        self._lock = threading.Lock()
        self.batches = 0
        self.rounds = 0
        self.alarms_raised = 0

    def holds(self, trip_id: str) -> bool:
        return trip_partition(trip_id, self.partitions) in self.owned

    # -- partitions -------------------------------------------------------------------------
    def acquire(self, n: int) -> None:
        """Trip partition ``n`` is this worker's now: its trips are loaded into the engine
        before its next use (partitions acquired together share one load)."""
        with self.gate.lock:
            if n in self.owned:
                return
            self.owned = self.owned | {n}
            self._pending.add(n)
            with self._lock:
                self.evaluated_to[n] = self.clock.now_ms()

    def release(self, n: int) -> None:
        """Partition ``n`` was lost or released (before another worker can claim it):
        checkpoint what changed, then its trips leave the engine (``Engine.unload_trip``:
        not ended, nothing emitted); its batches from now on fail."""
        with self.gate.lock:
            if n not in self.owned:
                return
            self._flush(f"trip partition {n} at hand-over")
            self.owned = self.owned - {n}
            self._pending.discard(n)
            with self._lock:
                self.evaluated_to.pop(n, None)
            with self.gate.held() as engine:
                for trip_id in engine.loaded_trips():
                    if trip_partition(trip_id, self.partitions) == n:
                        engine.unload_trip(trip_id)
            self._checked = {t for t in self._checked if self.holds(t)}

    def close(self) -> None:
        """Every partition released (the worker stops)."""
        for n in sorted(self.owned):
            self.release(n)

    def load(self) -> None:
        """Load the owned partitions' trips now (else the next use does)."""
        with self.gate.lock:
            self._ensure()

    def _flush(self, what: str) -> None:
        if not self._loaded:
            return  # the engine holds nothing newer than the store
        try:
            self.gate.flush()
        except Exception as exc:  # the next owner re-runs from the last checkpoint
            log.warning("checkpoint of %s failed: %s", what, exc)

    def _ensure(self) -> None:
        """Under the gate's lock: the trips of every acquired partition are loaded."""
        if not self._pending:
            return
        t0 = time.perf_counter()
        wanted = frozenset(self._pending)
        if not self._loaded:
            self.gate.load()  # shippers, geofences and the trips of every owned partition
            self._loaded = True
        else:
            now = self.clock.now_ms()

            def load(engine: Engine) -> int:
                def admit(trip_id: str) -> bool:
                    return trip_partition(trip_id, self.partitions) in wanted

                return load_trips(self.store, engine, now, trip_filter=admit)

            covered, _ = self.gate.commit(load, lambda _: ())
            self.gate.covered_to = max(self.gate.covered_to, covered)
        self._pending.clear()
        log.info("trip partitions %s loaded in %.2f s", sorted(wanted), time.perf_counter() - t0)

    # -- batches ----------------------------------------------------------------------------
    def process(self, items: Sequence[tuple[int, Sequence[BusMessage]]]) -> list[Exception | None]:
        """Store and evaluate one round's batches in one transaction; per batch None, or the
        error it failed with (its partition is no longer held). Store errors propagate (every
        batch of the round is given back and redelivered)."""
        t0 = time.perf_counter()
        outcomes: list[Exception | None] = []
        fixes: list[Fix] = []
        events: list[LockEvent] = []
        dead: list[DeadLetter] = []
        named: set[str] = set()
        received: dict[int, list[int]] = {}
        messages = 0
        owned = self.owned
        for n, batch in items:
            if n not in owned:
                outcomes.append(RuntimeError(f"trip partition {n} was lost"))
                continue
            outcomes.append(None)
            messages += len(batch)
            times = received.setdefault(n, [])
            self._decode(batch, fixes, events, dead, named, times)
        if not received:
            return outcomes
        now = self.clock.now_ms()
        named -= self._checked  # each trip named by messages is looked up once

        def refresh(engine: Engine) -> list[EngineEvent]:
            out: list[EngineEvent] = []
            for trip_id in named:
                if self.holds(trip_id):
                    out += refresh_trip(self.store, engine, trip_id, now)
            return out

        newest = max((max(t) for t in received.values() if t), default=None)
        with self.gate.lock:
            self._ensure()
            lost = [n for n in received if n not in self.owned]
            if lost:  # lost while this round was decoded: given back, as a whole
                raise RuntimeError(f"trip partitions {sorted(lost)} were lost")
            done = commit_batch(
                self.gate,
                self.metrics,
                fixes,
                events,
                dead,
                now,
                covers=newest,
                prepare=refresh,
            )
        created, marks = done.created, done.marks
        self._checked |= named
        new_f, new_e = done.fixes, done.events
        metrics = self.metrics
        metrics.fixes_stored.inc(len(new_f))
        metrics.lock_events_stored.inc(len(new_e))
        metrics.duplicates.inc(len(fixes) - len(new_f) + len(events) - len(new_e))
        metrics.batch_size.observe(messages)
        with self._lock:
            for n, times in received.items():
                if times and n in self.evaluated_to:
                    self.evaluated_to[n] = max(self.evaluated_to[n], max(times))
        every = [t for times in received.values() for t in times]
        if every:
            lag_s = max(0, now - min(every)) / 1000
            metrics.last_batch_lag_seconds.set(lag_s)
            metrics.ingest_lag_seconds.observe(lag_s)
        self.rounds += 1
        self.batches += len(received)
        self.alarms_raised += len(created)
        elapsed = time.perf_counter() - t0
        if elapsed > SLOW_BATCH_S:
            log.warning(
                "slow round of trip partitions %s: %d messages in %.2f s (store %.2f)",
                sorted(received),
                messages,
                elapsed,
                marks.get("store", t0) - t0,
            )
        return outcomes

    @staticmethod
    def _decode(
        batch: Sequence[BusMessage],
        fixes: list[Fix],
        events: list[LockEvent],
        dead: list[DeadLetter],
        named: set[str],
        received: list[int],
    ) -> None:
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
                received.append(record.received_at)
                if trip:
                    named.add(trip)

    # -- wall-clock rules and changes from the API ------------------------------------------
    def tick(self, now: int, backlog: Set[int]) -> int:
        """Signal loss, late arrival, activation up to the horizon (as ``Pipeline.tick``: with
        messages of a partition waiting, ``backlog``, only up to what has been evaluated)."""
        with self._lock:
            seen = now
            for n in backlog:
                seen = min(seen, self.evaluated_to.get(n, now))
            self._horizon = max(self._horizon, seen)
            at = self._horizon
        with self.gate.lock:
            if not self.owned:
                return 0
            self._ensure()
            _, created = self.gate.commit(lambda engine: engine.tick(at), lambda events: events)
        self.alarms_raised += len(created)
        return len(created)

    def refresh(self, trip_id: str) -> None:
        """A trip of a held partition changed in the store (created, changed, ended)."""
        with self.gate.lock:
            if not self.holds(trip_id):
                return
            self._ensure()
            now = self.clock.now_ms()
            self.gate.commit(
                lambda engine: refresh_trip(self.store, engine, trip_id, now),
                lambda events: events,
            )
            self._checked.add(trip_id)

    def note_ended(self, devices: list[str]) -> None:
        """A trip of these devices held elsewhere changed (maybe ended): the spans of their
        ended trips, for the trips here that share a device with it (the ended trip's engine
        alone saw it end)."""
        with self.gate.lock:
            if not self.owned:
                return
            self._ensure()
            with self.gate.held() as engine:
                mine = [d for d in devices if engine.device_trip(d) is not None]
                if mine:
                    load_ended_spans(self.store, engine, mine)

    def put_shipper(self, shipper: str) -> None:
        doc = self.store.get_shipper(shipper)
        if doc is None:
            return
        with self.gate.lock:
            if not self.owned:
                return
            self._ensure()
            self.gate.commit(
                lambda engine: engine.put_shipper_rules(shipper, doc.get("rules") or {}),
                lambda _: (),
            )

    def put_geofence(self, geofence_id: str) -> None:
        doc = self.store.get_geofence(geofence_id)
        with self.gate.lock:
            if not self.owned:
                return
            self._ensure()
            with self.gate.held() as engine:
                if doc is None:
                    engine.remove_geofence(geofence_id)
                else:
                    engine.put_geofence(doc)


class TripPartition:
    """Trip partition ``n`` held alone: a ``TripStage`` that owns only it (tests and tools
    that drive one partition's batches directly)."""

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
        self.stage = TripStage(partitions, store=store, clock=clock, hub=hub, metrics=metrics)
        self.stage.acquire(n)

    @property
    def gate(self) -> EngineGate:
        return self.stage.gate

    def load(self) -> None:
        self.stage.load()

    def process(self, batch: Sequence[BusMessage]) -> int:
        """Store and evaluate one batch; returns the alarms raised."""
        before = self.stage.alarms_raised
        [error] = self.stage.process([(self.n, batch)])
        if error is not None:
            raise error
        return self.stage.alarms_raised - before

    def tick(self, now: int, backlog: bool) -> int:
        return self.stage.tick(now, {self.n} if backlog else set())

    def refresh(self, trip_id: str) -> None:
        self.stage.refresh(trip_id)

    def note_ended(self, devices: list[str]) -> None:
        self.stage.note_ended(devices)

    def close(self) -> None:
        self.stage.release(self.n)
