"""One batch through the data flow: validate -> dead-letter -> store -> rules -> alarms.

Runs synchronously in one worker thread (the store is sync); the engine is guarded by a lock
because the API changes trips and rules from other threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from alerts import AlarmService
from cargowatch.metrics import Metrics
from core.clock import Clock
from rules import Engine
from telemetry.ingest import RawMessage
from telemetry.models import DeadLetter, DeadLetterReason, Fix, LockEvent
from telemetry.parse import parse_message, parse_topic
from telemetry.store import Store

log = logging.getLogger(__name__)

MAX_DEAD_PAYLOAD = 64 * 1024
SLOW_BATCH_S = 0.5  # a batch this slow eats into the 2 s detection deadline: say so


@dataclass(frozen=True, slots=True)
class BatchReport:
    messages: int
    fixes: int
    lock_events: int
    duplicates: int
    dead_letters: int
    alarms: int


class Pipeline:
    """The engine side of ingest: everything after the broker, for one batch at a time."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        alarms: AlarmService,
        clock: Clock,
        metrics: Metrics,
        *,
        prefix: str = "devices",
        engine_lock: threading.RLock | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.alarms = alarms
        self.clock = clock
        self.metrics = metrics
        self.prefix = prefix
        self.engine_lock = engine_lock or threading.RLock()
        self.known_devices: set[str] = set(store.device_ids())
        # Every message received up to this wall time has been evaluated (batches are FIFO
        # and stamped on receipt): the furthest the wall-clock rules may look.
        self.evaluated_to = clock.now_ms()
        self._horizon = self.evaluated_to

    def add_device(self, device_id: str) -> None:
        self.known_devices.add(device_id)

    def process(self, messages: Sequence[RawMessage]) -> BatchReport:
        """Validate, store and evaluate one batch. Never raises for bad input; store errors
        propagate so the caller does not acknowledge the batch (the broker redelivers)."""
        t0 = time.perf_counter()
        fixes: list[Fix] = []
        events: list[LockEvent] = []
        dead: list[DeadLetter] = []
        for m in messages:
            parsed_topic = parse_topic(m.topic, self.prefix)
            if parsed_topic is not None and parsed_topic[0] not in self.known_devices:
                dead.append(
                    DeadLetter(
                        m.topic,
                        m.payload[:MAX_DEAD_PAYLOAD],
                        m.received_at,
                        DeadLetterReason.UNKNOWN_DEVICE,
                        f"device {parsed_topic[0]!r} is not registered",
                        parsed_topic[0],
                    )
                )
                continue
            parsed = parse_message(m.topic, m.payload, m.received_at, self.prefix)
            fixes.extend(parsed.fixes)
            events.extend(parsed.lock_events)
            dead.extend(parsed.dead_letters)
        t_parse = time.perf_counter()

        if dead:
            self.store.insert_dead_letters(dead)
            for d in dead:
                self.metrics.dead_letters.labels(str(d.reason)).inc()
        new_fixes = fixes
        new_events = events
        if fixes:
            mask = self.store.insert_fixes(fixes)
            new_fixes = [f for f, new in zip(fixes, mask, strict=True) if new]
        if events:
            mask = self.store.insert_lock_events(events)
            new_events = [e for e, new in zip(events, mask, strict=True) if new]
        t_store = time.perf_counter()
        duplicates = len(fixes) - len(new_fixes) + len(events) - len(new_events)

        now = self.clock.now_ms()
        t_rules = t_store
        try:
            with self.engine_lock:
                result = self.engine.process(new_fixes, new_events, now)
        except Exception:
            # A rule bug must not stall ingest: the telemetry is stored (replayable); count it.
            log.exception("rule engine failed on a batch of %d messages", len(messages))
            self.metrics.rule_errors.inc()
            result = None
        created: list[dict] = []
        if result is not None:
            by_flag: dict[str, list[tuple[str, int, int | None]]] = defaultdict(list)
            for key, flag in result.flagged:
                by_flag[flag].append(key)
            for flag, keys in by_flag.items():
                self.store.flag_fixes(keys, flag)
            t_rules = time.perf_counter()
            created = self.alarms.handle(result.events)
        t_done = time.perf_counter()

        if t_done - t0 > SLOW_BATCH_S:
            log.warning(
                "slow batch: %d messages, %d engine events in %.2f s "
                "(parse %.2f, store %.2f, rules %.2f, alarms %.2f)",
                len(messages),
                len(result.events) if result is not None else 0,
                t_done - t0,
                t_parse - t0,
                t_store - t_parse,
                t_rules - t_store,
                t_done - t_rules,
            )
        metrics = self.metrics
        metrics.messages_in.inc(len(messages))
        metrics.fixes_stored.inc(len(new_fixes))
        metrics.lock_events_stored.inc(len(new_events))
        metrics.duplicates.inc(duplicates)
        metrics.batch_size.observe(len(messages))
        metrics.parse_seconds.observe(t_parse - t0)
        metrics.store_write_seconds.observe(t_store - t_parse)
        metrics.rules_seconds.observe(t_done - t_store)
        if messages:
            self.evaluated_to = max(self.evaluated_to, max(msg.received_at for msg in messages))
            lag_s = max(0, now - min(msg.received_at for msg in messages)) / 1000
            metrics.last_batch_lag_seconds.set(lag_s)
            metrics.ingest_lag_seconds.observe(lag_s)
        return BatchReport(
            len(messages), len(new_fixes), len(new_events), duplicates, len(dead), len(created)
        )

    def horizon(self, now: int, backlog: bool) -> int:
        """The wall time the wall-clock rules may judge at: now when nothing received is
        waiting, else only up to what has been evaluated. A truck whose fixes sit in our
        queue is not silent, and its arrival there is not late: ingest falling behind (a
        burst, a restart with a broker backlog) must not flood the desk with SIGNAL_LOST.
        ``now`` is read before ``backlog`` is looked at, so a message received before it is
        either evaluated or counted as backlog (bar one forming micro-batch, ``batch_ms``)."""
        seen = now if not backlog else min(now, self.evaluated_to)
        self._horizon = max(self._horizon, seen)
        return self._horizon

    def tick(self, now: int | None = None, backlog: bool = False) -> int:
        """Wall-clock rules (signal loss, late arrival, activation) up to :meth:`horizon`;
        ``backlog``: received messages are waiting to be evaluated. Returns alarms raised."""
        at = self.horizon(self.clock.now_ms() if now is None else now, backlog)
        with self.engine_lock:
            events = self.engine.tick(at)
        if not events:
            return 0
        return len(self.alarms.handle(events))
