"""Backtest: rerun the rules over stored history with a fresh engine.

Messages are fed in event-time order; arrival time is taken to be the event time
(``received_at := ts``) and the wall clock is the event time too, so ``tick`` fires exactly at
each timer's deadline (activation, SIGNAL_LOST, LATE_ARRIVAL) between the messages around
it. Nothing touches live state: the caller stores nothing from the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rules.engine import Engine
from rules.events import EngineEvent, PositionUpdate
from rules.thresholds import validate_rules
from telemetry.models import Fix, LockEvent

__all__ = ["replay"]

BATCH = 5_000


def replay(
    trips: Sequence[dict[str, Any]],
    fixes: Sequence[Fix],
    lock_events: Sequence[LockEvent],
    *,
    overrides: Mapping[str, float] | None = None,
    shipper_rules: Mapping[str, Mapping[str, float]] | None = None,
    geofences: Sequence[dict[str, Any]] = (),
    defaults: Mapping[str, float] | None = None,
    until_ms: int | None = None,
    positions: bool = False,
) -> list[EngineEvent]:
    """Every event the rules produce for ``trips`` (set back to planned) over the history.

    ``overrides`` apply on top of each trip's own rules (RuleValueError when invalid);
    ``until_ms`` also runs the clock on after the last message (e.g. to see a final
    SIGNAL_LOST); ``positions`` keeps PositionUpdates in the result.
    """
    over = validate_rules(overrides, "overrides")
    engine = Engine(defaults=defaults, position_events=positions)
    for shipper, rules in (shipper_rules or {}).items():
        engine.put_shipper_rules(shipper, rules)
    for fence in geofences:
        engine.put_geofence(fence)
    for doc in trips:
        planned = dict(doc)
        planned["status"] = "planned"
        if over:
            planned["rules"] = {**(doc.get("rules") or {}), **over}
        engine.upsert_trip(planned)
    messages: list[tuple[int, int, Fix | LockEvent]] = [
        (f.ts, 0, dataclasses.replace(f, received_at=f.ts)) for f in fixes
    ]
    messages += [(e.ts, 1, dataclasses.replace(e, received_at=e.ts)) for e in lock_events]
    messages.sort(key=lambda m: (m[0], m[1]))
    events: list[EngineEvent] = []
    i, n = 0, len(messages)
    clock = messages[0][0] if messages else 0
    while i < n:
        due = engine.next_timer_ms()
        if due is not None and due <= messages[i][0]:
            clock = max(due, clock)
            events += engine.tick(clock)
            again = engine.next_timer_ms()
            if again is not None and again <= clock:  # nothing moved: never spin
                i = _feed(engine, messages, i, i + 1, None, events)
            continue
        i = _feed(engine, messages, i, min(n, i + BATCH), due, events)
        clock = max(clock, messages[i - 1][0])
    if until_ms is not None:
        while True:
            due = engine.next_timer_ms()
            if due is None or due > until_ms:
                break
            clock = max(due, clock)
            events += engine.tick(clock)
            again = engine.next_timer_ms()
            if again is not None and again <= clock:
                break
    if not positions:
        events = [e for e in events if not isinstance(e, PositionUpdate)]
    return events


def _feed(
    engine: Engine,
    messages: list[tuple[int, int, Fix | LockEvent]],
    i: int,
    stop: int,
    due: int | None,
    events: list[EngineEvent],
) -> int:
    """Process messages ``i`` .. before ``stop`` with ts < ``due`` (at least one)."""
    j = i + 1
    while j < stop and (due is None or messages[j][0] < due):
        j += 1
    chunk = messages[i:j]
    fixes = [m[2] for m in chunk if isinstance(m[2], Fix)]
    locks = [m[2] for m in chunk if isinstance(m[2], LockEvent)]
    result = engine.process(fixes, locks, now_ms=chunk[-1][0])
    events += result.events
    return j
