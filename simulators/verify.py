"""Did the system under test do what the simulated trips say it must?

:func:`match_alarms` pairs the alarms a system raised with the trips' ``expected`` alarms
(type, trip, device, key details) and lists what is missing and what nobody expected.
:func:`trigger_times` and :func:`detection_lag_ms` measure how long after the triggering
message was published (simulated time) an alarm was raised: the detection latency.

Alarms are taken as the API renders them (times as RFC 3339 or epoch ms), so the same
check serves in-process runs and end-to-end tests against ``cargowatch serve``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from simulators.model import SimTrip


@dataclass
class Verdict:
    """The outcome of :func:`match_alarms`."""

    matched: list[tuple[dict[str, Any], Mapping[str, Any]]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every expected alarm raised, and nothing else."""
        return not self.missing and not self.unexpected

    def explain(self) -> str:
        """A short text for a failing assertion."""
        lines = [f"missing {len(self.missing)}, unexpected {len(self.unexpected)}"]
        lines += [f"  missing: {e}" for e in self.missing]
        lines += [
            f"  unexpected: {a.get('type')} {a.get('trip_id')} {a.get('device_id')} "
            f"{a.get('details')}"
            for a in self.unexpected
        ]
        return "\n".join(lines)


def _fits(exp: Mapping[str, Any], alarm: Mapping[str, Any]) -> bool:
    if alarm.get("type") != exp["type"]:
        return False
    if "device_id" in exp and alarm.get("device_id") != exp["device_id"]:
        return False
    details = alarm.get("details") or {}
    return all(details.get(k) == v for k, v in exp.get("details", {}).items())


def match_alarms(trips: Sequence[SimTrip], alarms: Iterable[Mapping[str, Any]]) -> Verdict:
    """Pair each trip's expected alarms with raised ones (one alarm per expectation); alarms
    of other trips, or more of a kind than expected, are unexpected."""
    by_trip: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for a in alarms:
        by_trip[str(a.get("trip_id"))].append(a)
    verdict = Verdict()
    known = set()
    for trip in trips:
        known.add(trip.trip_id)
        left = list(by_trip.get(trip.trip_id, ()))
        for exp in trip.expected:
            hit = next((a for a in left if _fits(exp, a)), None)
            if hit is None:
                verdict.missing.append({**exp, "scenario": trip.scenario})
            else:
                left.remove(hit)
                verdict.matched.append((exp, hit))
        verdict.unexpected.extend(left)
    for trip_id, rest in by_trip.items():
        if trip_id not in known:
            verdict.unexpected.extend(rest)
    return verdict


def to_ms(value: Any) -> int | None:
    """Epoch ms from an API time (RFC 3339 text or integer ms); None if absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return round(dt.timestamp() * 1000) if dt.tzinfo is not None else None


def trigger_times(trips: Sequence[SimTrip]) -> dict[tuple[str, int], int]:
    """``(trip_id, event ts) -> at_ms`` of the first message carrying a fix or lock event
    with that time: when a rule could first have seen it (a backlog's fixes map to when the
    backlog was sent)."""
    out: dict[tuple[str, int], int] = {}
    for trip in trips:
        for msg in trip.iter_messages():
            try:
                body = orjson.loads(msg.payload)
            except orjson.JSONDecodeError:
                continue
            for el in body if isinstance(body, list) else [body]:
                ts = to_ms(el.get("ts")) if isinstance(el, dict) else None
                if ts is not None:
                    key = (trip.trip_id, ts)
                    if key not in out or msg.at_ms < out[key]:
                        out[key] = msg.at_ms
    return out


def due_ms(alarm: Mapping[str, Any], triggers: Mapping[tuple[str, int], int]) -> int | None:
    """When the alarm became due, in simulated time: the wall-clock deadline of a timer
    alarm (SIGNAL_LOST, LATE_ARRIVAL), else the publish time of its triggering message."""
    details = alarm.get("details") or {}
    kind = alarm.get("type")
    if kind == "SIGNAL_LOST" and "last_heard_at" in details:
        return int(details["last_heard_at"] + details.get("signal_lost_s", 600) * 1000)
    if kind == "LATE_ARRIVAL" and "deadline" in details:
        return int(details["deadline"])
    ts = to_ms(alarm.get("ts"))
    if ts is None:
        return None
    return triggers.get((str(alarm.get("trip_id")), ts))


def detection_lag_ms(
    alarm: Mapping[str, Any], triggers: Mapping[tuple[str, int], int]
) -> int | None:
    """``raised_at`` minus :func:`due_ms`, simulated milliseconds (divide by the clock's
    speed for real time); None when the trigger is unknown."""
    due = due_ms(alarm, triggers)
    raised = to_ms(alarm.get("raised_at"))
    if due is None or raised is None:
        return None
    return raised - due
