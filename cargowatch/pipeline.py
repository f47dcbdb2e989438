"""One batch through the data flow: validate -> dead-letter -> store -> rules -> alarms.

Runs synchronously in one worker thread (the store is sync). The batch's telemetry, the
rules' verdicts, the alarms and the engine's checkpoint are one store transaction
(``EngineGate.commit``): after a failure at any point nothing of the batch is kept and the
engine is back at the last commit, so the redelivered batch is evaluated exactly once.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cargowatch.metrics import Metrics
from cargowatch.services.engine import EngineGate
from core.clock import Clock
from rules import Engine, EngineEvent, EngineResult
from telemetry.errors import StoreError
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


@dataclass(slots=True)
class Committed:
    """What one committed batch stored and raised (``marks``: perf_counter times)."""

    fixes: list[Fix]
    events: list[LockEvent]
    result: EngineResult
    created: list[dict[str, Any]]
    marks: dict[str, float]


def commit_batch(
    gate: EngineGate,
    metrics: Metrics,
    fixes: list[Fix],
    events: list[LockEvent],
    dead: list[DeadLetter],
    now: int,
    *,
    covers: int | None,
    prepare: Callable[[Engine], Sequence[EngineEvent]] | None = None,
) -> Committed:
    """Store, evaluate and record one batch in one transaction (``EngineGate.commit``):
    dead letters and telemetry first, then the rules on what was new (``prepare`` runs on
    the engine before them; what it returns is staged with their events), fix flags,
    alarms and, when due, checkpoints. Store errors propagate (nothing kept: the caller
    leaves the batch unacknowledged); a rule bug keeps the telemetry, counts the bug and
    rebuilds the engine from the store."""
    store = gate.store
    out = Committed(fixes, events, EngineResult([]), [], {})

    def store_batch() -> None:
        # Telemetry joins the transaction of the rules and alarms it leads to: either
        # all of it is kept, or none and the broker redelivers the batch.
        if dead:
            store.insert_dead_letters(dead)
        if fixes:
            mask = store.insert_fixes(fixes)
            out.fixes = [f for f, new in zip(fixes, mask, strict=True) if new]
        if events:
            mask = store.insert_lock_events(events)
            out.events = [e for e, new in zip(events, mask, strict=True) if new]
        out.marks["store"] = time.perf_counter()

    def evaluate(engine: Engine) -> EngineResult:
        # what preparing emitted (a trip loaded, its stored messages re-run) is staged first
        early = list(prepare(engine)) if prepare is not None else []
        try:
            result = engine.process(out.fixes, out.events, now)
            if early:
                result.events[:0] = early
            return result
        except StoreError:
            raise  # the store failed under the history read: retry the whole batch
        except Exception:
            # A rule bug must not stall ingest: keep the telemetry (replayable), keep no
            # half-applied state (nothing is checkpointed; the engine is reloaded).
            log.exception("rule engine failed on a batch of %d messages", len(fixes) + len(events))
            metrics.rule_errors.inc()
            engine.take_dirty()
            out.marks["rule_bug"] = 1.0
            return EngineResult([])

    def flag(result: EngineResult) -> None:
        by_flag: dict[str, list[tuple[str, int, int | None]]] = defaultdict(list)
        for key, name in result.flagged:
            by_flag[name].append(key)
        for name, keys in by_flag.items():
            store.flag_fixes(keys, name)
        out.marks["rules"] = time.perf_counter()

    out.result, out.created = gate.commit(
        evaluate,
        lambda r: r.events,
        before=store_batch,
        after=flag,
        covers=covers,
        positions_of=lambda r: r.positions,
    )
    if "rule_bug" in out.marks:
        gate.reload()
    for d in dead:
        metrics.dead_letters.labels(str(d.reason)).inc()
    return out


class Pipeline:
    """The engine side of ingest: everything after the broker, for one batch at a time."""

    def __init__(
        self,
        store: Store,
        gate: EngineGate,
        clock: Clock,
        metrics: Metrics,
        *,
        prefix: str = "devices",
    ) -> None:
        self.store = store
        self.gate = gate
        self.clock = clock
        self.metrics = metrics
        self.prefix = prefix
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

        now = self.clock.now_ms()
        done = commit_batch(
            self.gate,
            self.metrics,
            fixes,
            events,
            dead,
            now,
            covers=max((m.received_at for m in messages), default=None),
        )
        result, created, marks = done.result, done.created, done.marks
        new_fixes, new_events = done.fixes, done.events
        duplicates = len(fixes) - len(new_fixes) + len(events) - len(new_events)
        t_store = marks.get("store", t_parse)
        t_rules = marks.get("rules", t_store)
        t_done = time.perf_counter()

        if t_done - t0 > SLOW_BATCH_S:
            log.warning(
                "slow batch: %d messages, %d engine events in %.2f s "
                "(parse %.2f, store %.2f, rules %.2f, alarms %.2f)",
                len(messages),
                len(result.events),
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
        _, created = self.gate.commit(lambda engine: engine.tick(at), lambda events: events)
        return len(created)
