"""Desk KPIs over a set of stored alarms (``GET /v1/reports/kpi``).

- ``by_type`` / ``by_severity`` / ``by_status``: counts.
- acknowledge (resolve) on-time rate: of the alarms whose deadline has been *decided* (the
  alarm was acknowledged (resolved), or its ``ack_due`` (``resolve_due``) has passed without
  it), the share handled by the deadline. Alarms still within their deadline are not counted
  either way. Resolving an open alarm acknowledges it at the same time (alerts' life cycle).
- mean time to acknowledge (resolve): over the alarms that were, from ``raised_at``, seconds.
- false-alarm rate: resolved with cause ``false_alarm`` / resolved (None when none resolved).
- feedback: the shippers' verdicts (``accepted`` / ``disputed``) on resolved alarms.
- deadlines by severity: per severity, acknowledge and resolve deadlines met and missed
  (decided as for the on-time rates; pending ones are in neither).

``deadline_met`` is the one rule of "met, missed or not decided yet", shared with the ledger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Doc = dict[str, Any]


@dataclass(slots=True)
class _Deadline:
    """Tally of one deadline (acknowledge or resolve)."""

    on_time: int = 0
    counted: int = 0
    durations_ms: list[int] = field(default_factory=list)

    def add(self, raised_at: int | None, done_at: int | None, due: int | None, now: int) -> None:
        if done_at is not None and raised_at is not None:
            self.durations_ms.append(max(0, done_at - raised_at))
        if due is None:
            return
        if done_at is not None:
            self.counted += 1
            self.on_time += done_at <= due
        elif due <= now:
            self.counted += 1

    def view(self) -> Doc:
        n = len(self.durations_ms)
        return {
            "on_time": self.on_time,
            "counted": self.counted,
            "on_time_rate": self.on_time / self.counted if self.counted else None,
            "handled": n,
            "mean_time_s": sum(self.durations_ms) / n / 1000 if n else None,
        }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def handled_times(doc: Doc) -> tuple[int | None, int | None]:
    """When the alarm was acknowledged and resolved (a resolve of an open alarm is its
    acknowledge too)."""
    acked_at = _int(doc.get("acknowledged_at"))
    resolved_at = _int(doc.get("resolved_at"))
    return (resolved_at if acked_at is None else acked_at), resolved_at


def deadline_met(done_at: int | None, due: int | None, now: int) -> bool | None:
    """True: done by the deadline; False: done late, or not done and the deadline passed;
    None: not done and still within it (or no deadline)."""
    if due is None:
        return None
    if done_at is not None:
        return done_at <= due
    return False if due <= now else None


def compute_kpi(alarms: Iterable[Doc], now_ms: int) -> Doc:
    """KPIs of ``alarms`` (stored documents) as of ``now_ms``."""
    by_type: Counter[str] = Counter()
    by_severity: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    ack = _Deadline()
    resolve = _Deadline()
    resolved = 0
    false_alarms = 0
    total = 0
    feedback: Counter[str] = Counter({"accepted": 0, "disputed": 0})
    met: dict[str, Counter[str]] = {}
    for doc in alarms:
        total += 1
        by_type[str(doc.get("type"))] += 1
        by_severity[str(doc.get("severity"))] += 1
        by_status[str(doc.get("status"))] += 1
        raised_at = _int(doc.get("raised_at"))
        acked_at, resolved_at = handled_times(doc)
        ack.add(raised_at, acked_at, _int(doc.get("ack_due")), now_ms)
        resolve.add(raised_at, resolved_at, _int(doc.get("resolve_due")), now_ms)
        tally = met.setdefault(str(doc.get("severity")), Counter())
        for name, done_at in (("ack", acked_at), ("resolve", resolved_at)):
            verdict = deadline_met(done_at, _int(doc.get(f"{name}_due")), now_ms)
            if verdict is not None:
                tally[f"{name}_{'met' if verdict else 'missed'}"] += 1
        given = (doc.get("feedback") or {}).get("verdict")
        if isinstance(given, str) and given in feedback:
            feedback[given] += 1
        if doc.get("status") == "resolved":
            resolved += 1
            cause = (doc.get("resolution") or {}).get("cause")
            false_alarms += cause == "false_alarm"
    return {
        "alarms": total,
        "by_type": dict(sorted(by_type.items())),
        "by_severity": dict(sorted(by_severity.items())),
        "by_status": dict(sorted(by_status.items())),
        "acknowledge": ack.view(),
        "resolve": resolve.view(),
        "resolved": resolved,
        "false_alarms": false_alarms,
        "false_alarm_rate": false_alarms / resolved if resolved else None,
        "feedback": dict(feedback),
        "deadlines_by_severity": {
            severity: {
                key: tally[key]
                for key in ("ack_met", "ack_missed", "resolve_met", "resolve_missed")
            }
            for severity, tally in sorted(met.items())
        },
    }
