"""Counting for the fault benchmark: what was acknowledged against what came out. Pure
functions on plain data (keys and rows read from the publishers and the database), so they are
tested without a run.

Names follow the benchmark's report: ``…_lost`` (acknowledged, not stored), ``…_missing``
(due, never produced), ``…_duplicated`` (produced more than once; each extra copy counts one).
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

Key = tuple[str, int, int]  # device_id, ts (epoch ms), seq


def as_keys(rows: Iterable[Sequence[Any]]) -> set[Key]:
    """(device_id, ts, seq) tuples from JSON lists or database rows."""
    return {(str(r[0]), int(r[1]), int(r[2])) for r in rows}


def stored_counts(prefix: str, acked: set[Key], stored: set[Key]) -> dict[str, int]:
    """``{prefix}_acknowledged``, ``_stored`` and ``_lost`` (acknowledged but not stored)."""
    return {
        f"{prefix}_acknowledged": len(acked),
        f"{prefix}_stored": len(stored),
        f"{prefix}_lost": len(acked - stored),
    }


def duplicates(keys: Iterable[Hashable]) -> int:
    """Extra copies: a key seen n times counts n - 1."""
    return sum(n - 1 for n in collections.Counter(keys).values() if n > 1)


def alarm_counts(
    triggers: Iterable[tuple[str, int]], alarms: Iterable[tuple[str, int]]
) -> dict[str, int]:
    """Triggers (trip_id, event ts) that must each raise exactly one alarm, against the
    alarms' (trip_id, ts): ``alarms_missing`` (a trigger without its alarm),
    ``alarms_duplicated`` (copies of one alarm) and ``alarms_unexpected`` (alarms of no
    acknowledged trigger: a trigger that was stored although its PUBACK never arrived)."""
    due = set(triggers)
    seen = collections.Counter(alarms)
    return {
        "triggers": len(due),
        "alarms": sum(seen.values()),
        "alarms_missing": sum(1 for k in due if k not in seen),
        "alarms_duplicated": duplicates(seen.elements()),
        "alarms_unexpected": sum(1 for k in seen if k not in due),
    }


def milestone_counts(milestones: Iterable[tuple[str, str, str | None]]) -> dict[str, int]:
    """(trip_id, kind, stop_id) of every stored milestone: each may appear once."""
    rows = list(milestones)
    return {"milestones": len(rows), "milestones_duplicated": duplicates(rows)}


def delivery_counts(expected: Iterable[str], received: Mapping[str, int]) -> dict[str, int]:
    """Event ids in the outbox for the receiver against the ids it accepted (2xx), with how
    many times each: missing ones, and extra copies (a receiver de-duplicates by id, but
    the target is that it never has to)."""
    want = set(expected)
    return {
        "deliveries_expected": len(want),
        "deliveries_received": sum(1 for k in received if k in want),
        "deliveries_missing": sum(1 for k in want if received.get(k, 0) == 0),
        "deliveries_duplicated": sum(n - 1 for n in received.values() if n > 1),
    }


def recover_s(
    samples: Sequence[tuple[float, float]], fault_end: float, threshold: float
) -> float | None:
    """Seconds from ``fault_end`` to the first sample (time, backlog) at or after it whose
    backlog is within ``threshold`` and stays there for the rest of the samples that follow
    within 2 s (one lucky sample in a burst does not count). None: never recovered."""
    after = [(t, b) for t, b in samples if t >= fault_end]
    for i, (t, b) in enumerate(after):
        if b > threshold:
            continue
        window = [b2 for t2, b2 in after[i:] if t2 - t <= 2.0]
        if all(b2 <= threshold for b2 in window):
            return round(max(0.0, t - fault_end), 1)
    return None


def backlog_threshold(baseline: Sequence[float], rate: float, floor: float = 100.0) -> float:
    """What counts as keeping up: twice the steady backlog before the fault (its 90th
    percentile) or one second of the offered rate, whichever is larger, at least ``floor``."""
    steady = sorted(baseline)[int(0.9 * (len(baseline) - 1))] if baseline else 0.0
    return max(floor, 2.0 * steady, rate)


COLUMNS = (
    ("fault", "fault"),
    ("fixes ack'd", "fixes_acknowledged"),
    ("fixes stored", "fixes_stored"),
    ("fixes lost", "fixes_lost"),
    ("triggers", "triggers"),
    ("alarms missing", "alarms_missing"),
    ("alarms dup.", "alarms_duplicated"),
    ("milestones dup.", "milestones_duplicated"),
    ("deliveries expected", "deliveries_expected"),
    ("deliveries missing", "deliveries_missing"),
    ("deliveries dup.", "deliveries_duplicated"),
    ("peak RSS MB", "peak_rss_mb"),
    ("recover s", "recover_s"),
)


def markdown_table(faults: Sequence[Mapping[str, Any]]) -> str:
    """The report's table, one row per fault (``—`` for a figure a fault does not have;
    a fault that failed shows its error)."""
    lines = [
        "| " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for f in faults:
        if "error" in f:
            lines.append(f"| {f['fault']} | error: {f['error']} |" + " |" * (len(COLUMNS) - 2))
            continue
        cells = []
        for _, key in COLUMNS:
            v = f.get(key)
            cells.append("—" if v is None else f"{v:,}" if isinstance(v, int) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
