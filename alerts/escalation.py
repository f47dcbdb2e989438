"""Missed deadlines: each of an alarm's two deadlines escalates it at most once.

Derived from the stored document only (``ack_due``, ``resolve_due``, the ``*_escalated``
flags, ``status``), so escalation picks up where it left off after a restart.
"""

from __future__ import annotations

from typing import Any

from alerts.lifecycle import AlarmStatus

Doc = dict[str, Any]

SYSTEM = "system"
ACK = "ack"
RESOLVE = "resolve"


def missed_deadlines(doc: Doc, now: int) -> list[str]:
    """``["ack"]``, ``["resolve"]``, both or none: the deadlines passed and not yet escalated."""
    if doc["status"] == AlarmStatus.RESOLVED:
        return []
    missed = []
    if doc["status"] == AlarmStatus.OPEN and not doc.get("ack_escalated") and doc["ack_due"] <= now:
        missed.append(ACK)
    if not doc.get("resolve_escalated") and doc["resolve_due"] <= now:
        missed.append(RESOLVE)
    return missed


def escalate(doc: Doc, deadlines: list[str], *, now: int) -> tuple[Doc, list[Doc]]:
    """The next document (level raised by one per missed deadline) and one history entry each."""
    new = dict(doc)
    new["version"] = int(doc["version"]) + 1
    level = int(doc.get("escalation_level", 0))
    entries = []
    for deadline in deadlines:
        level += 1
        new[f"{deadline}_escalated"] = True
        entries.append(
            {
                "at": now,
                "by": SYSTEM,
                "key_id": None,
                "action": "escalated",
                "from": doc["status"],
                "to": doc["status"],
                "note": f"{deadline} deadline missed",
                "deadline": deadline,
                "level": level,
                "due": doc[f"{deadline}_due"],
            }
        )
    new["escalation_level"] = level
    return new, entries
