from __future__ import annotations

from alerts.escalation import escalate, missed_deadlines

T = 1_000_000


def alarm(**kw: object) -> dict:
    doc = {
        "alarm_id": "a", "status": "open", "ack_due": T, "resolve_due": T + 100,
        "ack_escalated": False, "resolve_escalated": False, "escalation_level": 0, "version": 3,
    }  # fmt: skip
    doc.update(kw)
    return doc


def test_nothing_before_the_deadlines() -> None:
    assert missed_deadlines(alarm(), T - 1) == []


def test_ack_deadline_only_while_open() -> None:
    assert missed_deadlines(alarm(), T) == ["ack"]
    assert missed_deadlines(alarm(status="acknowledged"), T) == []
    assert missed_deadlines(alarm(ack_escalated=True), T) == []


def test_resolve_deadline_until_resolved() -> None:
    assert missed_deadlines(alarm(), T + 100) == ["ack", "resolve"]
    assert missed_deadlines(alarm(status="acknowledged"), T + 100) == ["resolve"]
    assert missed_deadlines(alarm(status="resolved"), T + 100) == []
    assert missed_deadlines(alarm(ack_escalated=True, resolve_escalated=True), T + 10**9) == []


def test_escalate_raises_level_once_per_deadline() -> None:
    new, entries = escalate(alarm(), ["ack", "resolve"], now=T + 200)
    assert new["escalation_level"] == 2
    assert new["ack_escalated"] and new["resolve_escalated"]
    assert new["version"] == 4
    assert [(e["deadline"], e["level"], e["due"]) for e in entries] == [
        ("ack", 1, T),
        ("resolve", 2, T + 100),
    ]
    assert all(e["action"] == "escalated" and e["at"] == T + 200 for e in entries)
    assert missed_deadlines(new, T + 10**9) == []
